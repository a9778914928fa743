//! A worker: one NFQUEUE queue, its own engine, run-length batch verdicts, resets.

use super::*;

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
    pub gso: u64,
    pub csum_not_ready: u64,
    /// Time in `decide`, every 16th packet.
    pub latency: crate::metrics::Latency,
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
    let mut carried = WorkerStats::default();
    let mut out = Builder::new();
    let mut diag = if sock_destroy {
        SockDiag::open().ok()
    } else {
        None
    };
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
        }
        let n = queue.recv()?;
        if n == 0 {
            publish(shared, index, &carried, &engine);
            continue;
        }
        carried.wakeups += 1;
        out.clear();
        let now = now();
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
                let decision = if sampled.is_multiple_of(16) {
                    let t = std::time::Instant::now();
                    let d = engine.decide_at(q.payload, hook, now);
                    carried
                        .latency
                        .observe(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    d
                } else {
                    engine.decide_at(q.payload, hook, now)
                };
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
                    Verdict::Reset => match destroy_local(diag.as_mut(), q.payload) {
                        Destroyed::Yes => {
                            carried.destroyed += 1;
                            runs.push(&mut out, codec::NF_DROP, q.id);
                        }
                        Destroyed::NoSocket | Destroyed::Unsupported => {
                            carried.reset_by_mark += 1;
                            repeat_marked(&mut out, &mut runs, q.id, q.mark, marks.reset);
                            count_crafted(&mut carried, reset_local(injector.as_ref(), q.payload));
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
        if diag.is_none() && sock_destroy {
            diag = SockDiag::open().ok();
        }
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

/// Destroys the local socket the packet (remote → local) belongs to.
pub(super) fn destroy_local(diag: Option<&mut SockDiag>, packet: &[u8]) -> Destroyed {
    let Some(diag) = diag else {
        return Destroyed::Unsupported;
    };
    let Ok(p) = parse::packet(packet) else {
        return Destroyed::NoSocket;
    };
    let Transport::Tcp(t) = p.transport else {
        return Destroyed::NoSocket;
    };
    let (local, remote): (IpAddr, IpAddr) = (p.dst, p.src);
    diag.destroy(local, t.dport, remote, t.sport)
        .unwrap_or(Destroyed::Unsupported)
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
