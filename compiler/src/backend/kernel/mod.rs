//! Kernel IR programs → an executable that runs them with plain loops (`exec.rs`) and the
//! reference library routines: the Kernel IR's reference executor (`--backend kernel`),
//! as obvious as the Graph IR interpreter and tested against it. Every code generator is
//! tested against this one, kernel by kernel. Temporaries are allocated when the memory
//! plan says they come alive and freed when it says they die; the executor measures the
//! peak of live bytes and counts each kernel's loads and stores.
//!
//! Architecture invariant: this module sees Kernel IR only (`crate::kernel`), never a Graph
//! IR node (a test reads its sources to check).

mod exec;
mod routines;

use crate::kernel::memory_plan::{self, Liveness};
use crate::kernel::{Buffer, BufferKind, DType, Dim, KernelProgram};
use modelc_runtime::executable::{BufferInfo, CallOptions, Executable, HostTensor, Traffic};
use modelc_runtime::memory::MemoryPlan;
use std::collections::HashMap;

/// How values are rounded while they are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Every `Let`, reduction and store rounded to its dtype (a device's precision).
    Native,
    /// Everything kept in f64 (only casts round): the oracle's mode.
    F64,
}

/// Bytes moved by the kernels of the calls so far, by kind of kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Loop nests (elementwise and reduction kernels): bytes loaded and stored.
    pub loops: u64,
    /// GEMMs: each operand element once, each epilogue load and store.
    pub gemms: u64,
    /// Library routines: their operands and outputs, once each.
    pub routines: u64,
}

struct Compiled {
    name: String,
    program: KernelProgram,
    live: Liveness,
}

pub struct KernelExecutable {
    programs: Vec<Compiled>,
    /// Persistent buffers by name, in declaration order: dtype, shape, values.
    names: Vec<String>,
    persistent: HashMap<String, (DType, Vec<usize>, Vec<f64>)>,
    rounding: Rounding,
    traffic: Traffic,
    peak: Option<u64>,
    moved: Moved,
}

/// Compiles lowered programs with the persistent buffers `declared` (the model's
/// parameters; every other `param` buffer of the programs is added, zeroed).
pub fn compile(
    declared: Vec<(String, DType, Vec<usize>)>,
    programs: Vec<(String, KernelProgram)>,
    rounding: Rounding,
) -> Result<KernelExecutable, String> {
    let mut exe = KernelExecutable {
        programs: Vec::new(),
        names: Vec::new(),
        persistent: HashMap::new(),
        rounding,
        traffic: Traffic::default(),
        peak: None,
        moved: Moved::default(),
    };
    for (name, dtype, shape) in declared {
        exe.declare(&name, dtype, shape)?;
    }
    for (name, program) in programs {
        if exe.programs.iter().any(|c| c.name == name) {
            return Err(format!("two programs named `{name}`"));
        }
        crate::kernel::verify::verify(&program).map_err(|e| format!("program `{name}`: {e}"))?;
        for b in &program.buffers {
            if let BufferKind::Param(p) = &b.kind {
                let shape = constant_shape(b).ok_or_else(|| format!("persistent buffer `{p}` has a symbolic shape"))?;
                exe.declare(p, b.dtype, shape)?;
            }
        }
        let live = memory_plan::liveness(&program);
        exe.programs.push(Compiled { name, program, live });
    }
    Ok(exe)
}

fn constant_shape(b: &Buffer) -> Option<Vec<usize>> {
    b.shape.iter().map(|d| d.as_constant().and_then(|c| usize::try_from(c).ok())).collect()
}

impl KernelExecutable {
    fn declare(&mut self, name: &str, dtype: DType, shape: Vec<usize>) -> Result<(), String> {
        match self.persistent.get(name) {
            Some((d, s, _)) if *d == dtype && *s == shape => Ok(()),
            Some((d, s, _)) => {
                Err(format!("buffer `{name}` is declared both {}{s:?} and {}{shape:?}", d.name(), dtype.name()))
            }
            None => {
                let n = shape.iter().product();
                self.persistent.insert(name.to_string(), (dtype, shape, vec![0.0; n]));
                self.names.push(name.to_string());
                Ok(())
            }
        }
    }

    /// Bytes the kernels moved so far.
    pub fn moved(&self) -> Moved {
        self.moved
    }

    /// The memory plan of a call of `program` with inputs of these shapes, at each buffer's
    /// dtype size (what the executor measures: `activations_peak` after the call).
    pub fn planned(&self, program: &str, inputs: &[(&str, Vec<usize>)]) -> Result<memory_plan::Placement, String> {
        let c = &self.programs[self.compiled(program)?];
        let symbols = bind(&c.program, inputs)?;
        Ok(memory_plan::place(&c.program, &c.live, &|d| size(&symbols, d).ok().map(|v| v as u64), None))
    }

    /// A program's Kernel IR, as compiled.
    pub fn program(&self, name: &str) -> Option<&KernelProgram> {
        self.programs.iter().find(|c| c.name == name).map(|c| &c.program)
    }

    fn compiled(&self, name: &str) -> Result<usize, String> {
        self.programs.iter().position(|c| c.name == name).ok_or_else(|| format!("no program `{name}` was compiled"))
    }
}

/// The symbols the inputs bind (`B`, `T`, ...), then the program's defined dims.
fn bind(p: &KernelProgram, inputs: &[(&str, Vec<usize>)]) -> Result<HashMap<String, i64>, String> {
    let mut symbols: HashMap<String, i64> = HashMap::new();
    for b in &p.buffers {
        let BufferKind::Input(name) = &b.kind else { continue };
        let shape =
            inputs.iter().find(|(n, _)| n == name).map(|(_, s)| s).ok_or_else(|| format!("missing input `{name}`"))?;
        if shape.len() != b.shape.len() {
            return Err(format!("input `{name}` has shape {shape:?}, expected {} dims", b.shape.len()));
        }
        for (d, &actual) in b.shape.iter().zip(shape) {
            let syms: Vec<&str> = d.symbols().collect();
            if let [s] = syms.as_slice() {
                if *d != Dim::symbol(s) {
                    continue;
                }
                match symbols.get(*s) {
                    Some(&v) if v != actual as i64 => {
                        return Err(format!("`{s}` is {v} elsewhere but {actual} in input `{name}`"))
                    }
                    _ => {
                        symbols.insert(s.to_string(), actual as i64);
                    }
                }
            }
        }
    }
    for def in &p.dim_defs {
        if let Some(v) = def.eval(&|s: &str| symbols.get(s).copied()) {
            symbols.insert(def.name.clone(), v);
        }
    }
    Ok(symbols)
}

fn size(symbols: &HashMap<String, i64>, d: &Dim) -> Result<usize, String> {
    let v = d.eval(&|s: &str| symbols.get(s).copied()).ok_or_else(|| format!("dim {d} is not bound by the inputs"))?;
    usize::try_from(v).map_err(|_| format!("dim {d} is negative ({v})"))
}

impl Executable for KernelExecutable {
    fn backend(&self) -> &str {
        "kernel"
    }

    fn call(
        &mut self,
        program: &str,
        inputs: Vec<(&str, HostTensor)>,
        options: CallOptions,
    ) -> Result<Vec<(String, HostTensor)>, String> {
        let at = self.compiled(program)?;
        let shapes: Vec<(&str, Vec<usize>)> = inputs.iter().map(|(n, t)| (*n, t.shape.clone())).collect();
        let symbols = bind(&self.programs[at].program, &shapes)?;
        for (_, t) in &inputs {
            self.traffic.to_device += t.numel() as u64 * 8;
        }
        let c = &self.programs[at];
        let mut run = exec::Run::new(&c.program, &c.live, &symbols, self.rounding, options)?;
        // Persistent buffers move into the call and back out of it.
        for (i, b) in c.program.buffers.iter().enumerate() {
            match &b.kind {
                BufferKind::Param(name) => {
                    let (_, shape, data) =
                        self.persistent.get_mut(name).ok_or_else(|| format!("no buffer `{name}`"))?;
                    run.bind(i, shape.clone(), std::mem::take(data));
                }
                BufferKind::Input(name) => {
                    let t = inputs.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone());
                    let t = t.ok_or_else(|| format!("missing input `{name}`"))?;
                    run.bind(i, t.shape, t.data);
                }
                BufferKind::Temp => {}
            }
        }
        let result = run.all();
        let (mut storage, measured, moved) = run.into_parts();
        for (i, b) in c.program.buffers.iter().enumerate() {
            if let BufferKind::Param(name) = &b.kind {
                if let (Some(p), Some(data)) = (self.persistent.get_mut(name), storage[i].take()) {
                    p.2 = data;
                }
            }
        }
        result?;
        self.peak = Some(measured);
        self.moved.loops += moved.loops;
        self.moved.gemms += moved.gemms;
        self.moved.routines += moved.routines;
        self.traffic.calls += 1;
        let mut out = Vec::with_capacity(c.program.returns.len());
        for (name, b) in &c.program.returns {
            let buf = c.program.buffer(*b);
            let shape: Vec<usize> = buf.shape.iter().map(|d| size(&symbols, d)).collect::<Result<_, _>>()?;
            let data = match &buf.kind {
                BufferKind::Param(p) => self.persistent.get(p).map(|x| x.2.clone()).unwrap_or_default(),
                _ => storage[b.0 as usize].clone().unwrap_or_default(),
            };
            self.traffic.to_host += data.len() as u64 * buf.dtype.size() as u64;
            out.push((name.clone(), HostTensor::new(shape, data)));
        }
        for (i, (name, b)) in c.program.updates.iter().enumerate() {
            // One buffer may update several (CSE merges equal zeroed accumulators).
            let later = c.program.updates[i + 1..].iter().any(|(_, w)| w == b);
            let slot = &mut storage[b.0 as usize];
            let data = if later { slot.clone() } else { slot.take() };
            let data = data.ok_or_else(|| format!("update `{name}`: b{} was never written", b.0))?;
            let rounding = self.rounding;
            let p = self.persistent.get_mut(name).ok_or_else(|| format!("update of unknown buffer `{name}`"))?;
            if p.2.len() != data.len() {
                return Err(format!("update `{name}` has {} values, the buffer {}", data.len(), p.2.len()));
            }
            p.2 = data;
            if rounding == Rounding::Native {
                let dt = p.0;
                p.2.iter_mut().for_each(|x| *x = crate::library::round(*x, dt));
            }
        }
        Ok(out)
    }

    fn buffers(&self) -> Vec<BufferInfo> {
        self.names.iter().map(|n| BufferInfo { name: n.clone(), shape: self.persistent[n].1.clone() }).collect()
    }

    fn read(&mut self, buffer: &str) -> Result<HostTensor, String> {
        let (dtype, shape, data) =
            self.persistent.get(buffer).ok_or_else(|| format!("no buffer `{buffer}` in this executable"))?;
        self.traffic.to_host += data.len() as u64 * dtype.size() as u64;
        Ok(HostTensor::new(shape.clone(), data.clone()))
    }

    fn write(&mut self, buffer: &str, value: HostTensor) -> Result<(), String> {
        let rounding = self.rounding;
        let (dtype, shape, data) =
            self.persistent.get_mut(buffer).ok_or_else(|| format!("no buffer `{buffer}` in this executable"))?;
        if value.shape != *shape {
            return Err(format!("buffer `{buffer}` is {shape:?}; the value written is {:?}", value.shape));
        }
        self.traffic.to_device += value.data.len() as u64 * dtype.size() as u64;
        *data = value.data;
        if rounding == Rounding::Native {
            let dt = *dtype;
            data.iter_mut().for_each(|x| *x = crate::library::round(*x, dt));
        }
        Ok(())
    }

    fn traffic(&self) -> Traffic {
        self.traffic
    }

    fn activations_peak(&self) -> Option<u64> {
        self.peak
    }

    fn plan(&self, program: &str, inputs: &[(&str, Vec<usize>)]) -> Result<MemoryPlan, String> {
        let c = &self.programs[self.compiled(program)?];
        let symbols = bind(&c.program, inputs)?;
        // This executor holds every value as an f64: 8 bytes an element.
        let placed = memory_plan::place(&c.program, &c.live, &|d| size(&symbols, d).ok().map(|v| v as u64), Some(8));
        let peak = placed.peak;
        let buffers = self.persistent.values().map(|(_, _, d)| d.len() as u64 * 8).sum();
        let inputs = inputs.iter().map(|(_, s)| s.iter().product::<usize>() as u64 * 8).sum();
        Ok(MemoryPlan { buffers, inputs, peak })
    }

    fn memory_available(&self) -> Option<(u64, String)> {
        modelc_runtime::memory::host_available()
    }
}
