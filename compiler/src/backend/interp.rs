//! Programs → an executable over the reference interpreter: buffers live in slots (names
//! resolved once, at compile time), each call runs a program with every result rounded to
//! its node's dtype (f64 nodes stay f64), frees values after their last use, measures the
//! activation peak, moves declared updates into their buffers, and counts the bytes a
//! device backend would have copied between host and device.

use super::{Backend, Program};
use crate::graph::op::Op;
use crate::graph::types::TensorType;
use crate::graph::ValueId;
use crate::interp::{self, tensor::Tensor, Options, Precision};
use modelc_runtime::executable::{BufferInfo, CallOptions, Executable, HostTensor, Traffic};
use modelc_runtime::memory::MemoryPlan;
use std::collections::HashMap;

/// The interpreter as a backend, at a precision: `NATIVE` (each result rounded to its
/// dtype, what a device computes; the CLI's) or `F64` (the oracle's).
pub struct Interp {
    pub precision: Precision,
}

impl Interp {
    pub const NATIVE: Interp = Interp { precision: Precision::Native };
    pub const F64: Interp = Interp { precision: Precision::F64 };
}

impl Backend for Interp {
    fn name(&self) -> &'static str {
        "interp"
    }

    fn compile(
        &self,
        buffers: Vec<(String, TensorType)>,
        programs: Vec<Program>,
    ) -> Result<Box<dyn Executable>, String> {
        let mut exe = InterpExecutable {
            programs: Vec::new(),
            buffers: Vec::new(),
            names: Vec::new(),
            types: Vec::new(),
            index: HashMap::new(),
            traffic: Traffic::default(),
            peak: None,
            precision: self.precision,
        };
        for (name, ty) in buffers {
            exe.buffer(&name, &ty)?;
        }
        for p in programs {
            exe.add(p)?;
        }
        Ok(Box::new(exe))
    }
}

/// A program bound to the executable's buffer slots.
struct Compiled {
    program: Program,
    /// Per node: the buffer slot of a `param` leaf.
    slots: Vec<Option<usize>>,
    /// The slot each declared update writes.
    updates: Vec<(usize, ValueId)>,
    /// Each `input` leaf: its name, node and element size, for binding a call's inputs.
    inputs: Vec<(String, usize, u64)>,
    /// Values read after the run (returns, updates, gradients).
    keep: Vec<ValueId>,
}

pub struct InterpExecutable {
    programs: Vec<Compiled>,
    buffers: Vec<Tensor>,
    names: Vec<String>,
    types: Vec<TensorType>,
    index: HashMap<String, usize>,
    traffic: Traffic,
    peak: Option<u64>,
    precision: Precision,
}

fn concrete(ty: &TensorType, what: &str) -> Result<Vec<usize>, String> {
    ty.shape
        .iter()
        .map(|d| d.as_constant().and_then(|c| usize::try_from(c).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| format!("buffer `{what}` has a symbolic shape {}", ty.shape_text()))
}

impl InterpExecutable {
    /// The slot of buffer `name` of type `ty`, allocated zeroed on first sight.
    fn buffer(&mut self, name: &str, ty: &TensorType) -> Result<usize, String> {
        match self.index.get(name) {
            Some(&s) if self.types[s] == *ty => Ok(s),
            Some(&s) => Err(format!("buffer `{name}` is declared both {} and {}", self.types[s], ty)),
            None => {
                let shape = concrete(ty, name)?;
                let n = shape.iter().product();
                self.buffers.push(Tensor::new(shape, vec![0.0; n]));
                self.names.push(name.to_string());
                self.types.push(ty.clone());
                self.index.insert(name.to_string(), self.buffers.len() - 1);
                Ok(self.buffers.len() - 1)
            }
        }
    }

    fn add(&mut self, program: Program) -> Result<(), String> {
        if self.programs.iter().any(|c| c.program.name == program.name) {
            return Err(format!("two programs named `{}`", program.name));
        }
        let mut slots = Vec::with_capacity(program.graph.nodes.len());
        for node in &program.graph.nodes {
            let Op::Param { name } = &node.op else {
                slots.push(None);
                continue;
            };
            let slot = self.buffer(name, &node.ty).map_err(|e| format!("{e} (in program `{}`)", program.name))?;
            slots.push(Some(slot));
        }
        let mut updates = Vec::new();
        for (name, v) in &program.graph.updates {
            let slot = self.index.get(name).copied().ok_or_else(|| {
                format!("program `{}` updates `{name}`, which none of its `param` leaves reads", program.name)
            })?;
            updates.push((slot, *v));
        }
        let mut keep = crate::memory::kept(&program.graph);
        keep.extend(program.returns.iter().map(|(_, v)| *v));
        let inputs = (program.graph.nodes.iter().enumerate())
            .filter_map(|(i, n)| match &n.op {
                Op::Input { name } => Some((name.clone(), i, n.ty.dtype.size() as u64)),
                _ => None,
            })
            .collect();
        self.programs.push(Compiled { program, slots, updates, inputs, keep });
        Ok(())
    }

    fn compiled(&self, program: &str) -> Result<&Compiled, String> {
        self.programs
            .iter()
            .find(|c| c.program.name == program)
            .ok_or_else(|| format!("no program `{program}` was compiled"))
    }

    fn slot(&self, name: &str) -> Result<usize, String> {
        self.index.get(name).copied().ok_or_else(|| format!("no buffer `{name}` in this executable"))
    }
}

impl Executable for InterpExecutable {
    fn backend(&self) -> &str {
        "interp"
    }

    fn call(
        &mut self,
        program: &str,
        inputs: Vec<(&str, HostTensor)>,
        options: CallOptions,
    ) -> Result<Vec<(String, HostTensor)>, String> {
        let c = self
            .programs
            .iter()
            .find(|c| c.program.name == program)
            .ok_or_else(|| format!("no program `{program}` was compiled"))?;
        let graph = &c.program.graph;
        // Each given input bound to its leaf by node index.
        let mut given: Vec<Option<Tensor>> = vec![None; graph.nodes.len()];
        for (name, t) in inputs {
            let (_, node, size) = (c.inputs.iter().find(|(n, _, _)| n == name))
                .ok_or_else(|| format!("program `{program}` takes no input `{name}`"))?;
            self.traffic.to_device += t.numel() as u64 * size;
            given[*node] = Some(Tensor::new(t.shape, t.data));
        }
        let leaves: Vec<Option<&Tensor>> = (c.slots.iter().zip(&given))
            .map(|(slot, input)| match slot {
                Some(s) => Some(&self.buffers[*s]),
                None => input.as_ref(),
            })
            .collect();
        let opts = Options {
            precision: self.precision,
            training: options.training,
            seed: options.seed,
            check_finite: options.check_finite,
        };
        let (mut values, peak) = interp::run_bound(graph, &leaves, &opts, &c.keep).map_err(|e| e.0)?;
        drop(leaves);
        self.peak = Some(peak);
        self.traffic.calls += 1;
        let mut out = Vec::with_capacity(c.program.returns.len());
        for (i, (name, v)) in c.program.returns.iter().enumerate() {
            let t = &mut values[v.0 as usize];
            self.traffic.to_host += t.data.len() as u64 * graph.ty(*v).dtype.size() as u64;
            // Moved out unless a later return or an update reads the same value.
            let shared =
                c.program.returns[i + 1..].iter().any(|(_, w)| w == v) || c.updates.iter().any(|(_, w)| w == v);
            let t = if shared { t.clone() } else { std::mem::replace(t, Tensor::new(vec![0], Vec::new())) };
            out.push((name.clone(), HostTensor::new(t.shape, t.data)));
        }
        // A value may update several buffers (CSE merges equal updates, e.g. the zeroed
        // accumulators of parameters of one shape): moved at its last update, cloned before.
        for (i, (slot, v)) in c.updates.iter().enumerate() {
            let later = c.updates[i + 1..].iter().any(|(_, w)| w == v);
            self.buffers[*slot] = if later {
                values[v.0 as usize].clone()
            } else {
                std::mem::replace(&mut values[v.0 as usize], Tensor::new(vec![0], Vec::new()))
            };
        }
        Ok(out)
    }

    fn buffers(&self) -> Vec<BufferInfo> {
        self.names
            .iter()
            .zip(&self.buffers)
            .map(|(name, t)| BufferInfo { name: name.clone(), shape: t.shape.clone() })
            .collect()
    }

    fn read(&mut self, buffer: &str) -> Result<HostTensor, String> {
        let s = self.slot(buffer)?;
        let t = &self.buffers[s];
        self.traffic.to_host += t.data.len() as u64 * self.types[s].dtype.size() as u64;
        Ok(HostTensor::new(t.shape.clone(), t.data.clone()))
    }

    fn write(&mut self, buffer: &str, value: HostTensor) -> Result<(), String> {
        let s = self.slot(buffer)?;
        if value.shape != self.buffers[s].shape {
            return Err(format!(
                "buffer `{buffer}` is {:?}; the value written is {:?}",
                self.buffers[s].shape, value.shape
            ));
        }
        self.traffic.to_device += value.data.len() as u64 * self.types[s].dtype.size() as u64;
        // Stored at the buffer's dtype, as a device would hold it (the oracle keeps f64).
        let mut t = Tensor::new(value.shape, value.data);
        if self.precision == Precision::Native {
            interp::round_to(&mut t, self.types[s].dtype);
        }
        self.buffers[s] = t;
        Ok(())
    }

    fn traffic(&self) -> Traffic {
        self.traffic
    }

    fn activations_peak(&self) -> Option<u64> {
        self.peak
    }

    fn plan(&self, program: &str, inputs: &[(&str, Vec<usize>)]) -> Result<MemoryPlan, String> {
        let c = self.compiled(program)?;
        let graph = &c.program.graph;
        let mut shapes: Vec<Option<&[usize]>> = vec![None; graph.nodes.len()];
        let mut input_bytes = 0u64;
        for (name, shape) in inputs {
            let (_, node, _) = (c.inputs.iter().find(|(n, _, _)| n == name))
                .ok_or_else(|| format!("program `{program}` takes no input `{name}`"))?;
            shapes[*node] = Some(shape.as_slice());
            input_bytes = input_bytes.saturating_add(elements(shape).saturating_mul(8));
        }
        let peak = interp::planned_peak(graph, &shapes, &c.keep).map_err(|e| e.0)?;
        let buffers = self.buffers.iter().map(|t| (t.data.len() as u64).saturating_mul(8)).sum();
        Ok(MemoryPlan { buffers, inputs: input_bytes, peak })
    }

    fn memory_available(&self) -> Option<(u64, String)> {
        modelc_runtime::memory::host_available()
    }
}

fn elements(shape: &[usize]) -> u64 {
    shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))
}
