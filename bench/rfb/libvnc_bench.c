/*
 * The libvncserver side of bench/rfb/run.sh: libvncserver's own Hextile, ZRLE and Tight encoders
 * (TightJPEG: Tight for a client asking for JPEG quality level 8, libvncserver's TurboVNC
 * mapping of it: quality 92, 4:4:4) on the
 * frames vnc_encode_bench wrote (1920x1080, 32-bit 0x00RRGGBB little endian; damage.txt holds
 * the rectangles of the update from frame A to frame B).
 *
 * libvncserver's encoders write into a client's update buffer and flush it to the client's
 * socket, so each client gets one end of a socketpair and a thread drains the other end (as the
 * Rust side does). Each update is framed as rfbSendFramebufferUpdate frames it: the 4-byte
 * header, the rectangles, a final rfbSendUpdateBuf.
 *
 * Prints "encoder case fastest_ns median_ns bytes iterations" lines, like the Rust side.
 *
 * `libvnc_bench mjpeg DIR`: the 1080p MJPEG stream (mjpeg-N.jpg) to a TightJPEG client as a
 * libvncserver-based KVM would serve it: each frame decoded into the framebuffer with the
 * TurboJPEG functions libvncserver exports (its layer over libjpeg-turbo) and sent as a full
 * update. Prints "mjpeg libvncserver frames_per_s cpu_ns_per_frame bytes_per_frame frames".
 * Build: cc -O2 -o libvnc_bench libvnc_bench.c $(pkg-config --cflags --libs libvncserver) -lpthread
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <rfb/rfb.h>

#define W 1920
#define H 1080

static double budget_s = 3.0;

/* Reads one connection to its end; returns (through the pointer) how many bytes came. */
static void *drain(void *arg) {
    int fd = (int)(intptr_t)arg;
    static __thread char buf[1 << 20];
    uint64_t total = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        total += (uint64_t)n;
    close(fd);
    return (void *)(uintptr_t)total;
}

static char *read_file(const char *dir, const char *name, size_t *len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(n + 1);
    if (fread(b, 1, n, f) != (size_t)n) {
        perror(path);
        exit(1);
    }
    b[n] = 0;
    fclose(f);
    if (len)
        *len = n;
    return b;
}

/* The TurboJPEG decompression functions libvncserver exports (turbojpeg.h's). */
void *tjInitDecompress(void);
int tjDecompress2(void *handle, const unsigned char *jpeg, unsigned long size, unsigned char *dst,
                  int width, int pitch, int height, int pixel_format, int flags);
#define TJPF_BGRX 3

static uint64_t thread_cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

struct conn {
    rfbClientPtr cl;
    pthread_t reader;
};

static struct conn connect_client(rfbScreenInfoPtr screen, int encoding, int quality) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        exit(1);
    }
    struct conn c;
    pthread_create(&c.reader, NULL, drain, (void *)(intptr_t)sv[1]);
    c.cl = rfbNewClient(screen, sv[0]);
    if (!c.cl) {
        fprintf(stderr, "rfbNewClient failed\n");
        exit(1);
    }
    /* The client asked for `encoding` in the server's own format: no translation. */
    c.cl->format = screen->serverFormat;
    c.cl->translateFn = rfbTranslateNone;
    c.cl->preferredEncoding = encoding;
    c.cl->tightCompressLevel = getenv("BENCH_LEVEL") ? atoi(getenv("BENCH_LEVEL")) : 6;
    c.cl->tightQualityLevel = quality;
    /* libvncserver's Tight uses JPEG whenever turboQualityLevel is set, which rfbNewClient
     * does: -1 is lossless. */
    c.cl->turboQualityLevel = quality >= 0 ? 92 : -1;
    c.cl->turboSubsampLevel = 0; /* 4:4:4 */
    c.cl->state = RFB_NORMAL;
    return c;
}

/* Closes the client; returns the bytes that reached the other end after the 12-byte
 * ProtocolVersion libvncserver sends when a client connects. */
static uint64_t disconnect(struct conn *c) {
    rfbCloseClient(c->cl);
    rfbClientConnectionGone(c->cl);
    void *total;
    pthread_join(c->reader, &total);
    return (uint64_t)(uintptr_t)total - 12;
}

/* One FramebufferUpdate of `n` rectangles with `encoding`, flushed to the socket. */
static void update(rfbClientPtr cl, int encoding, const int (*rects)[4], int n) {
    rfbFramebufferUpdateMsg *fu = (rfbFramebufferUpdateMsg *)cl->updateBuf;
    fu->type = rfbFramebufferUpdate;
    fu->pad = 0;
    int count = 0;
    for (int i = 0; i < n; i++)
        count += encoding == rfbEncodingTight
                     ? rfbNumCodedRectsTight(cl, rects[i][0], rects[i][1], rects[i][2], rects[i][3])
                     : 1;
    fu->nRects = Swap16IfLE((uint16_t)count);
    cl->ublen = sz_rfbFramebufferUpdateMsg;
    for (int i = 0; i < n; i++) {
        int x = rects[i][0], y = rects[i][1], w = rects[i][2], h = rects[i][3];
        rfbBool ok = encoding == rfbEncodingHextile ? rfbSendRectEncodingHextile(cl, x, y, w, h)
                     : encoding == rfbEncodingTight ? rfbSendRectEncodingTight(cl, x, y, w, h)
                                                    : rfbSendRectEncodingZRLE(cl, x, y, w, h);
        if (!ok) {
            fprintf(stderr, "encoder failed\n");
            exit(1);
        }
    }
    if (!rfbSendUpdateBuf(cl)) {
        fprintf(stderr, "rfbSendUpdateBuf failed\n");
        exit(1);
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorts the times; the fastest is then v[0] and the median v[n / 2]. */
static void sort_times(uint64_t *v, int n) {
    qsort(v, n, sizeof *v, cmp_u64);
}

static rfbScreenInfoPtr make_screen(char *fb) {
    rfbLogEnable(0);
    int zero = 0;
    rfbScreenInfoPtr screen = rfbGetScreen(&zero, NULL, W, H, 8, 3, 4);
    /* the frames' layout: 0x00RRGGBB little endian */
    screen->serverFormat.redShift = 16;
    screen->serverFormat.greenShift = 8;
    screen->serverFormat.blueShift = 0;
    screen->frameBuffer = fb;
    return screen;
}

#define MJPEG_FRAMES 8

static int mjpeg(const char *dir) {
    char *jpeg[MJPEG_FRAMES];
    size_t len[MJPEG_FRAMES];
    for (int k = 0; k < MJPEG_FRAMES; k++) {
        char name[32];
        snprintf(name, sizeof name, "mjpeg-%d.jpg", k);
        jpeg[k] = read_file(dir, name, &len[k]);
    }
    char *fb = calloc((size_t)W * H, 4);
    rfbScreenInfoPtr screen = make_screen(fb);
    void *tj = tjInitDecompress();
    struct conn c = connect_client(screen, rfbEncodingTight, 8);
    const int full[1][4] = {{0, 0, W, H}};
    uint64_t n = 0, start = now_ns(), cpu = thread_cpu_ns();
    while (n < 5 || (now_ns() - start) / 1e9 < budget_s) {
        int k = (int)(n % MJPEG_FRAMES);
        if (tjDecompress2(tj, (unsigned char *)jpeg[k], len[k], (unsigned char *)fb, W, W * 4, H,
                          TJPF_BGRX, 0) != 0) {
            fprintf(stderr, "tjDecompress2 failed\n");
            return 1;
        }
        update(c.cl, rfbEncodingTight, full, 1);
        n++;
    }
    uint64_t wall = now_ns() - start;
    cpu = thread_cpu_ns() - cpu;
    uint64_t bytes = disconnect(&c);
    printf("mjpeg libvncserver %.1f %llu %llu %llu\n", n / (wall / 1e9), (unsigned long long)(cpu / n),
           (unsigned long long)(bytes / n), (unsigned long long)n);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: libvnc_bench DIR | libvnc_bench mjpeg DIR\n");
        return 2;
    }
    if (getenv("BENCH_SECONDS"))
        budget_s = atof(getenv("BENCH_SECONDS"));
    if (strcmp(argv[1], "mjpeg") == 0 && argc > 2)
        return mjpeg(argv[2]);
    const char *dir = argv[1];
    size_t la, lb;
    char *a = read_file(dir, "frame-a.raw", &la);
    char *b = read_file(dir, "frame-b.raw", &lb);
    if (la != (size_t)W * H * 4 || lb != la) {
        fprintf(stderr, "frames must be %dx%d 32-bit\n", W, H);
        return 1;
    }
    /* one damage case per line: "name x y w h" */
    char names[16][32];
    int damage[16][4];
    int nd = 0;
    char *d = read_file(dir, "damage.txt", NULL);
    for (char *line = strtok(d, "\n"); line && nd < 16; line = strtok(NULL, "\n"))
        if (sscanf(line, "%31s %d %d %d %d", names[nd], &damage[nd][0], &damage[nd][1], &damage[nd][2],
                   &damage[nd][3]) == 5)
            nd++;
    const int full[1][4] = {{0, 0, W, H}};

    rfbScreenInfoPtr screen = make_screen(a);

    static uint64_t times[4096];
    const struct {
        const char *name;
        int enc, quality;
    } encoders[] = {{"Hextile", rfbEncodingHextile, -1},
                    {"ZRLE", rfbEncodingZRLE, -1},
                    {"Tight", rfbEncodingTight, -1},
                    {"TightJPEG", rfbEncodingTight, 8}};
    for (int e = 0; e < 4; e++) {
        int enc = encoders[e].enc, quality = encoders[e].quality;
        /* Full frame: a fresh client each time (a new client's first update). */
        int n = 0;
        uint64_t bytes = 0, start = now_ns();
        screen->frameBuffer = a;
        while (n < 5 || ((now_ns() - start) / 1e9 < budget_s && n < 200)) {
            struct conn c = connect_client(screen, enc, quality);
            uint64_t t = now_ns();
            update(c.cl, enc, full, 1);
            times[n++] = now_ns() - t;
            bytes = disconnect(&c);
        }
        uint64_t full_bytes = bytes;
        sort_times(times, n);
        printf("%s full %llu %llu %llu %d\n", encoders[e].name, (unsigned long long)times[0],
               (unsigned long long)times[n / 2], (unsigned long long)full_bytes, n);
        /* 10 % damage: the first update after the full frame on a fresh client (ZRLE's zlib
         * stream holds the full frame, as in a real session). */
        for (int k = 0; k < nd; k++) {
            n = 0;
            start = now_ns();
            while (n < 5 || ((now_ns() - start) / 1e9 < budget_s && n < 200)) {
                struct conn c = connect_client(screen, enc, quality);
                screen->frameBuffer = a;
                update(c.cl, enc, full, 1);
                screen->frameBuffer = b;
                uint64_t t = now_ns();
                update(c.cl, enc, (const int (*)[4])&damage[k], 1);
                times[n++] = now_ns() - t;
                bytes = disconnect(&c) - full_bytes;
            }
            sort_times(times, n);
            printf("%s %s %llu %llu %llu %d\n", encoders[e].name, names[k], (unsigned long long)times[0],
                   (unsigned long long)times[n / 2], (unsigned long long)bytes, n);
        }
        fflush(stdout);
    }
    return 0;
}
