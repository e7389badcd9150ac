//! Sans-IO RFB (VNC) protocol core.
#![no_std]
#![forbid(unsafe_code)]
