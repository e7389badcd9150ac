//! [`Negotiator`]: the usual option sequence of a [`Plan`] (STARTTLS, extended headers or
//! structured replies, meta contexts, then the [`Goal`]), run on a [`Client`] through its public
//! commands only.

use super::Client;
use crate::error::CommandError;
use crate::wire::{InfoType, OptionType, ReplyType};

/// How a [`Negotiator`] treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlsPolicy {
    /// Never try TLS.
    Disable,
    /// Try STARTTLS; continue in the clear if the server refuses (libnbd "allow").
    Allow,
    /// TLS or nothing (`nbds://`). The client must also be configured with `tls_required`.
    Require,
}

/// What the negotiation ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Goal {
    /// Enter transmission with GO (EXPORT_NAME if the server lacks GO).
    Go,
    /// Ask INFO about the export, then ABORT.
    Info,
    /// LIST the exports, then ABORT.
    List,
    /// LIST_META_CONTEXT for the export, then ABORT.
    ListMetaContexts,
}

/// The usual option sequence a client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan<'p> {
    /// The export.
    pub export: &'p str,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// Ask for extended headers.
    pub extended_headers: bool,
    /// Ask for structured replies (if extended headers are not had).
    pub structured_replies: bool,
    /// Metadata contexts to select (e.g. `["base:allocation"]`).
    pub meta_contexts: &'p [&'p str],
    /// What to do at the end.
    pub goal: Goal,
}

/// A negotiation failure the application should report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NegotiateError {
    /// The server refused the final option (GO, INFO, LIST).
    Refused(OptionType, ReplyType),
    /// A command failed (buffer too small, invalid state).
    Command(CommandError),
    /// TLS is required and was not established.
    TlsUnavailable,
}

impl From<CommandError> for NegotiateError {
    fn from(e: CommandError) -> Self {
        Self::Command(e)
    }
}

impl core::fmt::Display for NegotiateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Refused(o, r) => write!(f, "server refused {o:?}: {r}"),
            Self::Command(e) => e.fmt(f),
            Self::TlsUnavailable => f.write_str("TLS is required but could not be established"),
        }
    }
}

impl core::error::Error for NegotiateError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    StartTls,
    Extended,
    Structured,
    Meta,
    Final,
    Fallback,
    Abort,
    Done,
}

/// Runs a [`Plan`] on a [`Client`]: whenever the client can send an option, call
/// [`Negotiator::step`] with the plan; it encodes the next option (or nothing, once the goal is
/// reached). TLS itself is the driver's: on `Event::StartTls` it sets up the layer and calls
/// `tls_established`, after which `step` continues. The plan is passed on every call (it
/// borrows strings the negotiator does not keep).
#[derive(Debug, Clone, Copy)]
pub struct Negotiator {
    step: Step,
}

impl Default for Negotiator {
    fn default() -> Self {
        Self::new()
    }
}

impl Negotiator {
    /// A negotiator at the start of a plan.
    pub fn new() -> Self {
        Self {
            step: Step::StartTls,
        }
    }

    /// Whether the plan has run to its end (transmission, or the goal's ABORT sent).
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// Encodes the next option of `plan` into `out` if the client can send one; `Ok(None)`
    /// when there is nothing to send now.
    pub fn step<const N: usize>(
        &mut self,
        plan: &Plan<'_>,
        client: &mut Client<N>,
        out: &mut [u8],
    ) -> Result<Option<usize>, NegotiateError> {
        if !client.can_send_option() {
            return Ok(None);
        }
        let plan = *plan;
        loop {
            let last = client.last_option();
            match self.step {
                Step::StartTls => {
                    self.step = Step::Extended;
                    if plan.tls != TlsPolicy::Disable
                        && !client.tls_active()
                        && client.fixed_newstyle()
                    {
                        return Ok(Some(client.opt_starttls(out)?));
                    }
                }
                Step::Extended => {
                    if plan.tls == TlsPolicy::Require && !client.tls_active() {
                        return Err(NegotiateError::TlsUnavailable);
                    }
                    self.step = Step::Structured;
                    if plan.extended_headers && client.fixed_newstyle() {
                        return Ok(Some(client.opt_extended_headers(out)?));
                    }
                }
                Step::Structured => {
                    self.step = Step::Meta;
                    if plan.structured_replies && !client.extended() && client.fixed_newstyle() {
                        return Ok(Some(client.opt_structured_reply(out)?));
                    }
                }
                Step::Meta => {
                    self.step = Step::Final;
                    let can = client.structured() || client.extended();
                    if can && !plan.meta_contexts.is_empty() && plan.goal == Goal::Go {
                        return Ok(Some(client.opt_set_meta_context(
                            plan.export,
                            plan.meta_contexts,
                            out,
                        )?));
                    }
                }
                Step::Final => {
                    if !client.fixed_newstyle() {
                        self.step = Step::Done;
                        return Ok(Some(client.opt_export_name(plan.export, out)?));
                    }
                    const WANT: [InfoType; 3] =
                        [InfoType::Name, InfoType::Description, InfoType::BlockSize];
                    let n = match plan.goal {
                        Goal::Go => {
                            self.step = Step::Fallback;
                            client.opt_go(plan.export, &WANT, out)?
                        }
                        Goal::Info => {
                            self.step = Step::Abort;
                            client.opt_info(plan.export, &WANT, out)?
                        }
                        Goal::List => {
                            self.step = Step::Abort;
                            client.opt_list(out)?
                        }
                        Goal::ListMetaContexts => {
                            self.step = Step::Abort;
                            client.opt_list_meta_context(plan.export, plan.meta_contexts, out)?
                        }
                    };
                    return Ok(Some(n));
                }
                Step::Fallback => {
                    self.step = Step::Done;
                    match last {
                        Some((OptionType::Go, Err(ReplyType::ErrUnsup))) if !client.extended() => {
                            return Ok(Some(client.opt_export_name(plan.export, out)?));
                        }
                        Some((OptionType::Go, Err(r))) => {
                            return Err(NegotiateError::Refused(OptionType::Go, r));
                        }
                        _ => return Ok(None),
                    }
                }
                Step::Abort => {
                    self.step = Step::Done;
                    if let Some((opt, Err(r))) = last
                        && matches!(
                            opt,
                            OptionType::Info | OptionType::List | OptionType::ListMetaContext
                        )
                    {
                        return Err(NegotiateError::Refused(opt, r));
                    }
                    return Ok(Some(client.opt_abort(out)?));
                }
                Step::Done => return Ok(None),
            }
        }
    }
}
