//! Memory planning over a Kernel IR program: each temporary buffer lives from the kernel
//! that first writes it to the last kernel that reads it (to the end for what the call
//! returns), and the plan, bound to a call's sizes, places every temporary in one arena
//! (first fit, in the order they come alive; a dead buffer's bytes are reused). The peak
//! of live bytes is what the executor measures.

use super::{BufId, BufferKind, Call, Dim, Expr, KernelBody, KernelProgram, Stmt};

/// When each temporary buffer is alive, as kernel positions.
#[derive(Clone, Debug, PartialEq)]
pub struct Liveness {
    /// Per buffer: `(first kernel that writes it, last kernel that reads it)`; `None` for
    /// buffers that are not temporaries or that no kernel writes.
    pub ranges: Vec<Option<(usize, usize)>>,
}

/// The buffers a kernel reads and writes.
pub fn accesses(body: &KernelBody) -> (Vec<BufId>, Vec<BufId>) {
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    match body {
        KernelBody::Loops(nests) => {
            for n in nests {
                stmts(&n.body, &mut reads, &mut writes);
            }
        }
        KernelBody::Call(Call::Gemm(g)) => {
            reads.extend([g.a.buf, g.b.buf]);
            stmts(&g.epilogue, &mut reads, &mut writes);
        }
        KernelBody::Call(Call::Routine { args, out, .. }) => {
            reads.extend(args.iter().copied());
            writes.push(*out);
        }
    }
    (reads, writes)
}

fn stmts(body: &[Stmt], reads: &mut Vec<BufId>, writes: &mut Vec<BufId>) {
    for s in body {
        match s {
            Stmt::Let { value: Expr::Load { buf, .. }, .. } => reads.push(*buf),
            Stmt::Let { .. } | Stmt::Check { .. } => {}
            Stmt::Reduce { body, .. } | Stmt::For { body, .. } => stmts(body, reads, writes),
            Stmt::Store { buf, .. } => writes.push(*buf),
        }
    }
}

pub fn liveness(p: &KernelProgram) -> Liveness {
    let mut ranges: Vec<Option<(usize, usize)>> = vec![None; p.buffers.len()];
    for (k, kernel) in p.kernels.iter().enumerate() {
        let (reads, writes) = accesses(&kernel.body);
        for b in writes {
            let r = &mut ranges[b.0 as usize];
            *r = Some(r.map_or((k, k), |(s, e)| (s.min(k), e.max(k))));
        }
        for b in reads {
            if let Some((s, e)) = &mut ranges[b.0 as usize] {
                *e = (*e).max(k);
                *s = (*s).min(k);
            }
        }
    }
    let end = p.kernels.len();
    for (_, b) in p.returns.iter().chain(&p.updates) {
        if let Some((_, e)) = &mut ranges[b.0 as usize] {
            *e = end;
        }
    }
    for (i, b) in p.buffers.iter().enumerate() {
        if b.kind != BufferKind::Temp {
            ranges[i] = None;
        }
    }
    Liveness { ranges }
}

/// The plan bound to a call's sizes: each temporary's bytes and offset, the arena's size
/// and the peak of live bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    pub offsets: Vec<Option<u64>>,
    pub bytes: Vec<u64>,
    /// The arena: the largest offset + size.
    pub arena: u64,
    /// The most bytes of temporaries alive at once.
    pub peak: u64,
    /// Every temporary's bytes added up (what no reuse would take).
    pub unplanned: u64,
}

/// Places the temporaries of `p` for the sizes `dim` gives, each element taking its
/// dtype's size (or `element_bytes`, for an executor that stores every value alike).
pub fn place(
    p: &KernelProgram,
    live: &Liveness,
    dim: &dyn Fn(&Dim) -> Option<u64>,
    element_bytes: Option<u64>,
) -> Placement {
    let n = p.buffers.len();
    let bytes: Vec<u64> = p
        .buffers
        .iter()
        .map(|b| dim(&b.numel()).unwrap_or(0).saturating_mul(element_bytes.unwrap_or(b.dtype.size() as u64)))
        .collect();
    let mut order: Vec<usize> = (0..n).filter(|&b| live.ranges[b].is_some()).collect();
    order.sort_by_key(|&b| (live.ranges[b].map(|r| r.0), b));
    let mut offsets = vec![None; n];
    // Placed buffers alive at each kernel: (offset, size, last use).
    let mut placed: Vec<(u64, u64, usize, usize)> = Vec::new();
    let (mut arena, mut unplanned) = (0u64, 0u64);
    for &b in &order {
        let (start, end) = live.ranges[b].unwrap_or((0, 0));
        unplanned = unplanned.saturating_add(bytes[b]);
        let mut busy: Vec<(u64, u64)> =
            placed.iter().filter(|(_, _, s, e)| *e >= start && *s <= end).map(|(o, sz, _, _)| (*o, *sz)).collect();
        busy.sort_unstable();
        let mut at = 0u64;
        for (o, sz) in busy {
            if at.saturating_add(bytes[b]) <= o {
                break;
            }
            at = at.max(o.saturating_add(sz));
        }
        offsets[b] = Some(at);
        arena = arena.max(at.saturating_add(bytes[b]));
        placed.push((at, bytes[b], start, end));
    }
    let kernels = p.kernels.len() + 1;
    let mut peak = 0u64;
    for k in 0..kernels {
        let live_bytes: u64 = (0..n)
            .filter(|&b| live.ranges[b].is_some_and(|(s, e)| s <= k && k <= e))
            .map(|b| bytes[b])
            .fold(0u64, |a, x| a.saturating_add(x));
        peak = peak.max(live_bytes);
    }
    Placement { offsets, bytes, arena, peak, unplanned }
}
