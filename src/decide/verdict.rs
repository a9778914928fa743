//! What the engine answers for a packet: a [`Verdict`] for the shell to carry out and the
//! [`Reason`] for it. Plain data, shared by the engine, the imported iptables chains, the
//! replay report and the daemon.

use crate::blacklist::{ListId, RuleId};
use crate::parse;

/// Where a packet met the filter: addressed to this host (`INPUT`), or passing through it
/// to a host behind it (`FORWARD`, a gateway). The daemon reads it from the queue; a replay
/// says it (`--chain`).
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub enum Hook {
    #[default]
    Input,
    Forward,
}

impl Hook {
    /// The built-in chain's name: `INPUT` or `FORWARD`.
    pub fn chain(self) -> &'static str {
        match self {
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
        }
    }

    /// `input` or `forward` (any case).
    pub fn parse(s: &str) -> Option<Hook> {
        match s.to_ascii_lowercase().as_str() {
            "input" => Some(Hook::Input),
            "forward" => Some(Hook::Forward),
            _ => None,
        }
    }
}

/// What the shell does with the packet.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Verdict {
    /// Let it through.
    Accept,
    /// Let it through and stop queueing its flow.
    Bypass,
    /// Discard it.
    Drop,
    /// Discard it and reset the connection.
    Reset,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Accept,
        Verdict::Bypass,
        Verdict::Drop,
        Verdict::Reset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Bypass => "bypass",
            Verdict::Drop => "drop",
            Verdict::Reset => "reset",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why the engine decided as it did.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Reason {
    /// The source is in a ban list.
    Banned { list: ListId },
    /// A rule matched a packet from an allowlisted source: accepted, nobody banned.
    Allowlisted { rule: RuleId },
    /// Looked at, nothing matched.
    Clean,
    /// A rule matched.
    Matched { rule: RuleId },
    /// A rule matched, but the source has not proven that the address is its own: nobody is
    /// banned or reset. Dropped, except [`Unproven::MidStream`] (accepted: its bytes may be a
    /// body).
    Unproven { rule: RuleId, cause: Unproven },
    /// Not to a protected port: not the engine's business.
    Unguarded,
    /// The server's side of a flow followed in smtp mode (read for its replies).
    Reply,
    /// The flow is past its envelope (or its byte budget): let through uninspected.
    Bypassed,
    /// Out of order beyond what a flow holds: dropped so that TCP sends it again later.
    FlowLimit,
    /// Data of a proven flow that acknowledges what the server never sent: outside the
    /// connection's window (a forger guessing), dropped unread.
    OutOfWindow,
    /// Imported iptables rules decided: the file line of the rule, or None for the policy.
    Iptables { line: Option<u32> },
    /// The bytes are not a packet we can read.
    Unparsed(parse::Error),
}

/// Why a match convicted nobody (docs/ARCHITECTURE.md, *Proof of address*).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Unproven {
    /// No local socket with the packet's exact tuple has completed its handshake: a packet with
    /// no connection behind it (a forged source, a guessed tuple).
    NoConnection = 0,
    /// The tracker saw no handshake completed by the source (a blind one: the ACK did not
    /// acknowledge the server's SYN-ACK), and no socket could vouch for it.
    NoHandshake = 1,
    /// The segment acknowledges what the server never sent: outside the connection's window.
    OutOfWindow = 2,
    /// The flow was not followed from its start (first seen mid-stream, or evicted and seen
    /// again): its bytes may be a body.
    MidStream = 3,
}

impl Unproven {
    pub const ALL: [Unproven; 4] = [
        Unproven::NoConnection,
        Unproven::NoHandshake,
        Unproven::OutOfWindow,
        Unproven::MidStream,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Unproven::NoConnection => "no_connection",
            Unproven::NoHandshake => "no_handshake",
            Unproven::OutOfWindow => "out_of_window",
            Unproven::MidStream => "mid_stream",
        }
    }
}

/// The engine's answer for one packet.
#[must_use]
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
}
