//! A worker: one NFQUEUE queue, its own engine, run-length batch verdicts, resets.

use super::*;
use crate::engine::{Reason, Sighting, Unproven, Witness};
use crate::sys::sockdiag::TcpSocket;

/// Counters of one worker that the engine does not keep.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    pub engine: Stats,
    pub malformed: u64,
    pub wakeups: u64,
    pub destroyed: u64,
    pub reset_by_mark: u64,
    /// Crafted RSTs sent toward the protected side (with `reset_by_mark`): this host's socket,
    /// or the server behind a gateway.
    pub crafted: u64,
    /// Crafted RSTs that could not be sent (no raw socket, or the send failed): that side's
    /// session lingers until its own timeout.
    pub crafted_failed: u64,
    /// Packets met in `FORWARD` (a gateway's), and the resets among them.
    pub forwarded: u64,
    pub forwarded_resets: u64,
    /// Resets for which no local session had the packet's exact tuple: the packet was dropped
    /// and nothing else done (no listener destroyed, no RST crafted).
    pub reset_no_socket: u64,
    /// Socket lookups for proof of address, those refused over the per-second budget, and
    /// those that failed (an error from the kernel: counted as no proof).
    pub lookups: u64,
    pub lookups_over_budget: u64,
    pub lookup_errors: u64,
    pub gso: u64,
    pub csum_not_ready: u64,
    /// Time in `decide`, every 16th packet.
    pub latency: crate::metrics::Latency,
}

/// Most socket lookups a worker makes per second for proof of address (and in a burst): a flood
/// of forged matches costs at most this many netlink round trips (~10 µs each); beyond it a
/// match convicts nobody (dropped, counted), so a flood can never buy a ban.
const LOOKUPS_PER_SECOND: u64 = 2_000;

/// The daemon's witness: this host's sockets, looked up by a packet's exact tuple over
/// sock_diag, within a budget. The session found is kept for the reset that follows.
pub(super) struct Sockets {
    diag: Option<SockDiag>,
    /// The last session found (the reset of the same packet destroys it by its cookie).
    found: Option<TcpSocket>,
    /// Token bucket: lookups left, refilled to the budget each second.
    tokens: u64,
    second: u64,
    now: Instant,
    lookups: u64,
    over_budget: u64,
    errors: u64,
}

impl Sockets {
    pub(super) fn new(diag: Option<SockDiag>) -> Sockets {
        Sockets {
            diag,
            found: None,
            tokens: LOOKUPS_PER_SECOND,
            second: 0,
            now: Instant::from_secs(0),
            lookups: 0,
            over_budget: 0,
            errors: 0,
        }
    }

    /// The local session of `packet` (remote → local): the one the proof found, or a fresh
    /// lookup. None: no session with that exact tuple takes data.
    fn session_of(&mut self, packet: &[u8]) -> Result<Option<TcpSocket>, ()> {
        let Ok(p) = parse::packet(packet) else {
            return Ok(None);
        };
        let Transport::Tcp(t) = p.transport else {
            return Ok(None);
        };
        if let Some(s) = self.found.take()
            && same_tuple(&s, &p, &t)
        {
            return Ok(Some(s));
        }
        if self.diag.is_none() {
            return Err(());
        }
        // A reset the proof did not look up (imported iptables rules): the same budget, so a
        // flood of forged matches buys no more lookups; over it, no session is assumed.
        if !self.take_token() {
            return Ok(None);
        }
        Ok(self.lookup(&p, &t))
    }

    /// One lookup token, if the second's budget has one left (else counted).
    fn take_token(&mut self) -> bool {
        let second = self.now.secs();
        if second != self.second {
            (self.second, self.tokens) = (second, LOOKUPS_PER_SECOND);
        }
        if self.tokens == 0 {
            self.over_budget += 1;
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// The session with `p`'s exact tuple, if it takes data. A failed lookup counts as none,
    /// and is counted and logged (the first of each thousand).
    fn lookup(&mut self, p: &parse::Packet<'_>, t: &crate::parse::Tcp) -> Option<TcpSocket> {
        let diag = self.diag.as_mut()?;
        self.lookups += 1;
        match diag.session(p.dst, t.dport, p.src, t.sport) {
            Ok(found) => found,
            Err(e) => {
                self.errors += 1;
                if self.errors % 1000 == 1 {
                    warn!(
                        failures = self.errors,
                        "a socket lookup failed ({e}): the match convicts nobody"
                    );
                }
                None
            }
        }
    }
}

/// Is `s` the local end of `p`'s connection (v4-mapped on a dual-stack socket too)?
fn same_tuple(s: &TcpSocket, p: &parse::Packet<'_>, t: &crate::parse::Tcp) -> bool {
    let canon = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    (canon(s.local), s.lport, canon(s.remote), s.rport)
        == (canon(p.dst), t.dport, canon(p.src), t.sport)
}

impl Witness for Sockets {
    fn sighting(&mut self, packet: &parse::Packet<'_>, hook: Hook) -> Sighting {
        // A gateway has no socket of the flows it forwards; UDP has no connection to prove.
        let Transport::Tcp(t) = packet.transport else {
            return Sighting::Unknown;
        };
        if hook == Hook::Forward {
            return Sighting::Unknown;
        }
        if self.diag.is_none() {
            return Sighting::Unknown;
        }
        if !self.take_token() {
            return Sighting::Absent;
        }
        match self.lookup(packet, &t) {
            Some(s) => {
                self.found = Some(s);
                Sighting::Established
            }
            None => Sighting::Absent,
        }
    }
}

pub(super) fn worker(
    index: usize,
    mut queue: Queue,
    shared: &Shared,
    blacklist: Arc<Blacklist>,
    marks: Marks,
    sock_destroy: bool,
) -> Result<(), QueueError> {
    let mut generation = shared.generation.load(Relaxed);
    let mut engine = Engine::with_blacklist(&lock(&shared.config), Arc::clone(&blacklist));
    share_recent(shared, &mut engine);
    engine.share_flow_budget(Arc::clone(&shared.flow_budget));
    let mut carried = WorkerStats::default();
    let mut out = Builder::new();
    // Opened whatever `sock_destroy` says: the lookups prove addresses and find what a
    // reset may abort; `sock_destroy` only says whether it is aborted or reset by the marks.
    let mut sockets = Sockets::new(match SockDiag::open() {
        Ok(d) => Some(d),
        Err(e) => {
            warn!(
                "no sock_diag socket ({e}): proof of address falls back to the flow tracker, resets to the kernel's REJECT"
            );
            None
        }
    });
    let mut iptables_mode = lock(&shared.config).iptables.is_some();
    let injector = match RstInjector::open(marks.inject()) {
        Ok(i) => Some(i),
        Err(e) => {
            warn!("no raw socket for crafted RSTs toward local sockets: {e}");
            None
        }
    };
    let num = queue.num();
    let mut published = std::time::Instant::now();
    let mut sampled = 0u32;
    while !shared.stop.load(Relaxed) {
        let g = shared.generation.load(Relaxed);
        if g != generation {
            generation = g;
            carried.engine.merge(engine.stats());
            engine = Engine::with_blacklist(&lock(&shared.config), Arc::clone(&blacklist));
            share_recent(shared, &mut engine);
            engine.share_flow_budget(Arc::clone(&shared.flow_budget));
            iptables_mode = lock(&shared.config).iptables.is_some();
        }
        let n = queue.recv()?;
        if n == 0 {
            publish(shared, index, &carried, &engine);
            continue;
        }
        carried.wakeups += 1;
        out.clear();
        let now = now();
        sockets.now = now;
        let mut runs = Runs::new(num);
        // A verdict that sets one of our marks (keeping the packet's other mark bits) and
        // repeats the packet, so that the chain acts on the mark.
        let repeat_marked = |out: &mut Builder, runs: &mut Runs, id: u32, old: u32, mark: u32| {
            runs.flush(out);
            out.verdict(num, id, codec::NF_REPEAT, Some(old & !marks.mask | mark));
        };
        for i in 0..n {
            for msg in queue.datagram(i) {
                let msg = match msg {
                    Ok(m) => m,
                    Err(_) => {
                        carried.malformed += 1;
                        break;
                    }
                };
                if msg.kind != (codec::SUBSYS_QUEUE << 8 | codec::MSG_PACKET) {
                    continue;
                }
                let q = match codec::packet(&msg) {
                    Ok(q) => q,
                    Err(_) => {
                        carried.malformed += 1;
                        continue;
                    }
                };
                carried.gso += u64::from(q.skb_info & codec::SKB_GSO != 0);
                carried.csum_not_ready += u64::from(q.skb_info & codec::SKB_CSUMNOTREADY != 0);
                sampled = sampled.wrapping_add(1);
                let hook = if q.hook == codec::HOOK_FORWARD {
                    carried.forwarded += 1;
                    Hook::Forward
                } else {
                    Hook::Input
                };
                sockets.found = None;
                let decision = if sampled.is_multiple_of(16) {
                    let t = std::time::Instant::now();
                    let d = engine.decide_seen(q.payload, hook, now, &mut sockets);
                    carried
                        .latency
                        .observe(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    d
                } else {
                    engine.decide_seen(q.payload, hook, now, &mut sockets)
                };
                if let Reason::Unproven { cause, .. } = decision.reason {
                    note_unproven(&mut carried, &engine, cause, q.payload);
                }
                match decision.verdict {
                    Verdict::Accept => runs.push(&mut out, codec::NF_ACCEPT, q.id),
                    Verdict::Drop => runs.push(&mut out, codec::NF_DROP, q.id),
                    Verdict::Bypass => {
                        repeat_marked(&mut out, &mut runs, q.id, q.mark, marks.bypass)
                    }
                    // A forwarded flow has no socket here: the client gets the kernel's RST
                    // (REJECT, by the mark) and the server behind a crafted one.
                    Verdict::Reset if hook == Hook::Forward => {
                        carried.forwarded_resets += 1;
                        carried.reset_by_mark += 1;
                        repeat_marked(&mut out, &mut runs, q.id, q.mark, marks.reset);
                        count_crafted(&mut carried, reset_local(injector.as_ref(), q.payload));
                    }
                    // Only a session that exists is reset: looked up by the exact tuple (the
                    // proof's lookup, reused), destroyed by its cookie — never a listener.
                    Verdict::Reset => match sockets.session_of(q.payload) {
                        Ok(Some(session)) => {
                            let destroyed = match sockets.diag.as_mut() {
                                Some(diag) if sock_destroy => diag
                                    .destroy_session(&session)
                                    .unwrap_or(Destroyed::Unsupported),
                                _ => Destroyed::Unsupported,
                            };
                            match destroyed {
                                Destroyed::Yes => {
                                    carried.destroyed += 1;
                                    runs.push(&mut out, codec::NF_DROP, q.id);
                                }
                                // Gone between lookup and destroy: nothing left to reset.
                                Destroyed::NoSocket => {
                                    carried.reset_no_socket += 1;
                                    runs.push(&mut out, codec::NF_DROP, q.id);
                                }
                                Destroyed::Unsupported => {
                                    carried.reset_by_mark += 1;
                                    repeat_marked(&mut out, &mut runs, q.id, q.mark, marks.reset);
                                    count_crafted(
                                        &mut carried,
                                        reset_local(injector.as_ref(), q.payload),
                                    );
                                }
                            }
                        }
                        // No session: dropped and counted, nothing else. Imported iptables
                        // rules keep the kernel's REJECT (a RST to the source, as the kernel
                        // recipe sends), never a crafted RST toward the listener.
                        Ok(None) => {
                            carried.reset_no_socket += 1;
                            if iptables_mode {
                                carried.reset_by_mark += 1;
                                repeat_marked(&mut out, &mut runs, q.id, q.mark, marks.reset);
                            } else {
                                runs.push(&mut out, codec::NF_DROP, q.id);
                            }
                        }
                        // No sock_diag at all: the kernel's REJECT for the remote only.
                        Err(()) => {
                            carried.reset_by_mark += 1;
                            repeat_marked(&mut out, &mut runs, q.id, q.mark, marks.reset);
                        }
                    },
                }
            }
        }
        runs.flush(&mut out);
        queue.send(&out)?;
        if published.elapsed() >= StdDuration::from_millis(500) {
            published = std::time::Instant::now();
            publish(shared, index, &carried, &engine);
        }
        if sockets.diag.is_none() {
            sockets.diag = SockDiag::open().ok();
        }
        (
            carried.lookups,
            carried.lookups_over_budget,
            carried.lookup_errors,
        ) = (sockets.lookups, sockets.over_budget, sockets.errors);
    }
    publish(shared, index, &carried, &engine);
    Ok(())
}

/// Gives the engine the daemon's recent tables (the first engine's become them).
pub(super) fn share_recent(shared: &Shared, engine: &mut Engine) {
    let mut slot = lock(&shared.recent);
    match slot.as_ref() {
        Some(tables) => engine.share_recent_tables(Arc::clone(tables)),
        None => *slot = engine.recent_tables(),
    }
}

/// Verdicts as runs: consecutive packets (in id order) with the same plain verdict become one
/// `NFQNL_MSG_VERDICT_BATCH`, which covers every queued id up to the run's last. A marked verdict
/// flushes the open run first, so no batch ever covers a packet judged on its own.
pub(super) struct Runs {
    queue: u16,
    open: Option<(u32, u32)>,
}

impl Runs {
    pub(super) fn new(queue: u16) -> Runs {
        Runs { queue, open: None }
    }

    pub(super) fn push(&mut self, out: &mut Builder, verdict: u32, id: u32) {
        match &mut self.open {
            Some((v, last)) if *v == verdict => *last = id,
            _ => {
                self.flush(out);
                self.open = Some((verdict, id));
            }
        }
    }

    pub(super) fn flush(&mut self, out: &mut Builder) {
        if let Some((verdict, last)) = self.open.take() {
            out.verdict_batch(self.queue, last, verdict);
        }
    }
}

pub(super) fn publish(shared: &Shared, index: usize, carried: &WorkerStats, engine: &Engine) {
    let mut s = carried.clone();
    s.engine.merge(engine.stats());
    *lock(&shared.stats[index]) = s;
}

/// What became of a crafted RST.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Crafted {
    Sent,
    /// Nothing to send: not TCP, or a RST (never answered with a RST, as the kernel's REJECT).
    NotNeeded,
    /// No raw socket, or the send failed.
    Failed,
}

fn count_crafted(s: &mut WorkerStats, c: Crafted) {
    match c {
        Crafted::Sent => s.crafted += 1,
        Crafted::NotNeeded => {}
        Crafted::Failed => {
            s.crafted_failed += 1;
            // The first of each thousand failures is logged (the counter has them all).
            if s.crafted_failed % 1000 == 1 {
                warn!(
                    failures = s.crafted_failed,
                    "a crafted RST could not be sent: that side of the session is not reset"
                );
            }
        }
    }
}

/// Sends the packet's destination (this host's socket, or the server behind a gateway) a RST
/// as if from the packet's source.
pub(super) fn reset_local(injector: Option<&RstInjector>, packet: &[u8]) -> Crafted {
    let Ok(p) = parse::packet(packet) else {
        return Crafted::NotNeeded;
    };
    let Transport::Tcp(t) = p.transport else {
        return Crafted::NotNeeded;
    };
    // A RST is never answered with a RST (as the kernel's REJECT: `nf_send_reset`).
    if t.flags & crate::parse::tcp_flags::RST != 0 {
        return Crafted::NotNeeded;
    }
    let Some(injector) = injector else {
        return Crafted::Failed;
    };
    match injector.send(p.src, t.sport, p.dst, t.dport, t.seq) {
        Ok(()) => Crafted::Sent,
        Err(_) => Crafted::Failed,
    }
}

/// Counts and logs (the first of each thousand, so a poisoning attempt is visible and a flood
/// cannot fill the log) a match that convicted nobody for want of proof of address.
fn note_unproven(s: &mut WorkerStats, engine: &Engine, cause: Unproven, packet: &[u8]) {
    let total: u64 =
        engine.stats().unproven.iter().sum::<u64>() + s.engine.unproven.iter().sum::<u64>();
    if total % 1000 != 1 {
        return;
    }
    let (src, sport) = match parse::packet(packet) {
        Ok(p) => (
            p.src.to_string(),
            match p.transport {
                Transport::Tcp(t) => t.sport,
                _ => 0,
            },
        ),
        Err(_) => ("?".into(), 0),
    };
    warn!(
        source = %src,
        port = sport,
        cause = cause.name(),
        refused = total,
        "a match from an address that did not prove it is its own: nobody banned (a forged source?)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::nfqueue::codec::{
        MSG_VERDICT, MSG_VERDICT_BATCH, NF_ACCEPT, NF_DROP, NF_REPEAT, SUBSYS_QUEUE,
    };

    /// (message type, verdict, id) of every verdict in `out`.
    fn verdicts(out: &Builder) -> Vec<(u16, u32, u32)> {
        codec::messages(out.as_bytes())
            .map(|m| {
                let m = m.unwrap();
                let (_, hdr) = codec::attributes(&m.payload[4..]).next().unwrap().unwrap();
                let v = u32::from_be_bytes(hdr[..4].try_into().unwrap());
                let id = u32::from_be_bytes(hdr[4..8].try_into().unwrap());
                (m.kind & 0xff, v, id)
            })
            .collect()
    }

    #[test]
    fn runs_become_batches_and_marked_verdicts_split_them() {
        let mut out = Builder::new();
        let mut runs = Runs::new(0);
        for id in 1..=3 {
            runs.push(&mut out, NF_DROP, id);
        }
        runs.push(&mut out, NF_ACCEPT, 4);
        runs.push(&mut out, NF_ACCEPT, 5);
        runs.flush(&mut out);
        out.verdict(0, 6, NF_REPEAT, Some(0x20000));
        runs.push(&mut out, NF_ACCEPT, 7);
        runs.flush(&mut out);
        runs.flush(&mut out);
        assert_eq!(
            verdicts(&out),
            vec![
                (MSG_VERDICT_BATCH, NF_DROP, 3),
                (MSG_VERDICT_BATCH, NF_ACCEPT, 5),
                (MSG_VERDICT, NF_REPEAT, 6),
                (MSG_VERDICT_BATCH, NF_ACCEPT, 7),
            ]
        );
        let _ = SUBSYS_QUEUE;
    }
}
