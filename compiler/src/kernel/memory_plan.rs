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

/// In-place storage, decided on the program before its buffers are placed:
/// - an update whose value one loop kernel (or GEMM epilogue) stores, reading the old
///   value of the persistent buffer only at the element it stores and before storing it,
///   stores into the persistent buffer directly (the optimizer's updates, the gradient
///   accumulators), and the update is dropped;
/// - an elementwise kernel's output takes the buffer of an input that dies there, when it
///   reads that input only at the element it stores, before storing it.
///
/// Returns how many buffers were stored in place.
pub fn in_place(p: &mut KernelProgram) -> usize {
    let mut done = 0;
    let updates = std::mem::take(&mut p.updates);
    for (i, (name, x)) in updates.iter().cloned().enumerate() {
        // A value that updates several buffers (CSE's shared zeros) is stored once.
        let shared = updates.iter().enumerate().any(|(j, (_, y))| j != i && *y == x);
        match persistent(p, &name).filter(|&target| !shared && try_update_in_place(p, x, target)) {
            Some(_) => done += 1,
            None => p.updates.push((name, x)),
        }
    }
    done + alias_temps(p)
}

fn persistent(p: &KernelProgram, name: &str) -> Option<BufId> {
    p.buffers.iter().position(|b| matches!(&b.kind, BufferKind::Param(n) if n == name)).map(|i| BufId(i as u32))
}

/// The kernels that write and that read `b`.
fn users(p: &KernelProgram, b: BufId) -> (Vec<usize>, Vec<usize>) {
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for (k, kernel) in p.kernels.iter().enumerate() {
        let (reads, writes) = accesses(&kernel.body);
        if writes.contains(&b) {
            writers.push(k);
        }
        if reads.contains(&b) {
            readers.push(k);
        }
    }
    (writers, readers)
}

/// The statements a kernel runs per element where `x` is stored, in order, and the
/// index it is stored at; `None` unless exactly one statement list stores `x`, at an
/// index of distinct loop variables.
fn storing_body(body: &KernelBody, x: BufId) -> Option<(Vec<&Stmt>, Vec<super::Index>)> {
    fn flat<'s>(body: &'s [Stmt], out: &mut Vec<&'s Stmt>) {
        for s in body {
            out.push(s);
            if let Stmt::For { body, .. } | Stmt::Reduce { body, .. } = s {
                flat(body, out);
            }
        }
    }
    let mut lists: Vec<Vec<&Stmt>> = Vec::new();
    match body {
        KernelBody::Loops(nests) => {
            for n in nests {
                let mut out = Vec::new();
                flat(&n.body, &mut out);
                lists.push(out);
            }
        }
        KernelBody::Call(Call::Gemm(g)) => {
            let mut out = Vec::new();
            flat(&g.epilogue, &mut out);
            lists.push(out);
        }
        KernelBody::Call(Call::Routine { .. }) => return None,
    }
    let stores = |l: &Vec<&Stmt>| l.iter().filter(|s| matches!(s, Stmt::Store { buf, .. } if *buf == x)).count();
    let with: Vec<Vec<&Stmt>> = lists.into_iter().filter(|l| stores(l) > 0).collect();
    let [list] = with.as_slice() else { return None };
    if stores(list) != 1 {
        return None;
    }
    let index = list.iter().find_map(|s| match s {
        Stmt::Store { buf, index, .. } if *buf == x => Some(index.clone()),
        _ => None,
    })?;
    let mut vars = std::collections::HashSet::new();
    if !index.iter().all(|i| matches!(i, super::Index::Var(v) if vars.insert(*v)) || i.is_zero()) {
        return None;
    }
    Some((list.clone(), index))
}

/// Whether, in the statements of the kernel that stores `x`, `old` is read only at the
/// element `x` is stored at and never after the store.
fn reads_only_there(stmts: &[&Stmt], x: BufId, index: &[super::Index], old: BufId) -> bool {
    let mut stored = false;
    for s in stmts {
        match s {
            Stmt::Store { buf, .. } if *buf == x => stored = true,
            Stmt::Let { value: Expr::Load { buf, index: at, .. }, .. }
                if *buf == old && (stored || at.as_slice() != index) =>
            {
                return false;
            }
            _ => {}
        }
    }
    true
}

fn try_update_in_place(p: &mut KernelProgram, x: BufId, target: BufId) -> bool {
    if x == target || p.buffer(x).kind != BufferKind::Temp || p.buffer(x).shape != p.buffer(target).shape {
        return false;
    }
    if p.returns.iter().any(|(_, b)| *b == x) || p.updates.iter().any(|(_, b)| *b == x) {
        return false;
    }
    let (writers, readers) = users(p, x);
    let ([k], []) = (writers.as_slice(), readers.as_slice()) else { return false };
    let k = *k;
    let (_, target_readers) = users(p, target);
    if target_readers.iter().any(|&r| r > k) || users(p, target).0.iter().any(|&w| w != k) {
        return false;
    }
    let Some((list, index)) = storing_body(&p.kernels[k].body, x) else { return false };
    if !reads_only_there(&list, x, &index, target) {
        return false;
    }
    // The kernel's other nests (which run before or after this one) must not read the
    // persistent buffer at all.
    if let KernelBody::Loops(nests) = &p.kernels[k].body {
        let touches = |n: &super::LoopNest, b: BufId, reading: bool| {
            let (mut r, mut w) = (Vec::new(), Vec::new());
            stmts(&n.body, &mut r, &mut w);
            if reading {
                r.contains(&b)
            } else {
                w.contains(&b)
            }
        };
        if nests.iter().any(|n| !touches(n, x, false) && touches(n, target, true)) {
            return false;
        }
    }
    rename_stores(&mut p.kernels[k].body, x, target);
    true
}

fn rename_stores(body: &mut KernelBody, from: BufId, to: BufId) {
    fn walk(body: &mut [Stmt], from: BufId, to: BufId) {
        for s in body {
            match s {
                Stmt::Store { buf, .. } if *buf == from => *buf = to,
                Stmt::For { body, .. } | Stmt::Reduce { body, .. } => walk(body, from, to),
                _ => {}
            }
        }
    }
    match body {
        KernelBody::Loops(nests) => nests.iter_mut().for_each(|n| walk(&mut n.body, from, to)),
        KernelBody::Call(Call::Gemm(g)) => walk(&mut g.epilogue, from, to),
        KernelBody::Call(Call::Routine { .. }) => {}
    }
}

fn rename_loads(body: &mut KernelBody, from: BufId, to: BufId) {
    fn walk(body: &mut [Stmt], from: BufId, to: BufId) {
        for s in body {
            match s {
                Stmt::Let { value: Expr::Load { buf, .. }, .. } if *buf == from => *buf = to,
                Stmt::For { body, .. } | Stmt::Reduce { body, .. } => walk(body, from, to),
                _ => {}
            }
        }
    }
    match body {
        KernelBody::Loops(nests) => nests.iter_mut().for_each(|n| walk(&mut n.body, from, to)),
        KernelBody::Call(Call::Gemm(g)) => {
            if g.a.buf == from {
                g.a.buf = to;
            }
            if g.b.buf == from {
                g.b.buf = to;
            }
            walk(&mut g.epilogue, from, to)
        }
        KernelBody::Call(Call::Routine { args, .. }) => args.iter_mut().filter(|b| **b == from).for_each(|b| *b = to),
    }
}

/// Elementwise outputs into the buffer of an input that dies in the same kernel.
fn alias_temps(p: &mut KernelProgram) -> usize {
    let mut done = 0;
    for k in 0..p.kernels.len() {
        let KernelBody::Loops(nests) = &p.kernels[k].body else { continue };
        if nests.len() != 1 {
            continue;
        }
        let (reads, writes) = accesses(&p.kernels[k].body);
        let mut outputs: Vec<BufId> = writes.clone();
        outputs.dedup();
        let mut taken: Vec<BufId> = Vec::new();
        for o in outputs {
            if p.buffer(o).kind != BufferKind::Temp || p.returns.iter().any(|(_, b)| *b == o) {
                continue;
            }
            let (o_writers, _) = users(p, o);
            if o_writers != [k] {
                continue;
            }
            let candidate = reads.iter().copied().find(|&i| {
                let ib = p.buffer(i);
                i != o
                    && !taken.contains(&i)
                    && ib.kind == BufferKind::Temp
                    && ib.shape == p.buffer(o).shape
                    && ib.dtype.size() == p.buffer(o).dtype.size()
                    && !p.returns.iter().chain(&p.updates).any(|(_, b)| *b == i)
                    && users(p, i).1.iter().all(|&r| r <= k)
                    && users(p, i).0.iter().all(|&w| w < k)
            });
            let Some(i) = candidate else { continue };
            let Some((list, index)) = storing_body(&p.kernels[k].body, o) else { continue };
            if !reads_only_there(&list, o, &index, i) {
                continue;
            }
            // The output is now `i`: its stores here and every later read.
            rename_stores(&mut p.kernels[k].body, o, i);
            for later in p.kernels[k + 1..].iter_mut() {
                rename_loads(&mut later.body, o, i);
            }
            for (_, b) in p.returns.iter_mut().chain(p.updates.iter_mut()) {
                if *b == o {
                    *b = i;
                }
            }
            // Its dtype may differ in name only (same size): the buffer keeps `o`'s.
            p.buffers[i.0 as usize].dtype = p.buffers[o.0 as usize].dtype;
            taken.push(i);
            done += 1;
        }
    }
    done
}
