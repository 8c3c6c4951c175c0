//! Programs of a workload → an `Executable` (runtime's interface): the one place where a
//! backend is chosen. Every command that runs a model (`run`, `train`, `generate`,
//! `merge`) compiles its programs through `Backend::compile` and calls them through the
//! executable; nothing else drives an interpreter or a device.
//!
//! Two backends today: the Graph IR interpreter (`interp`, the oracle), and the Kernel IR
//! reference executor (`kernel`), which gets each program lowered to Kernel IR here, at
//! the one dispatch point, and never sees the Graph IR itself. The compiled backends (CPU
//! JIT, CUDA, MLIR) will take the same Kernel IR.

pub mod interp;
pub mod kernel;

use crate::graph::types::TensorType;
use crate::graph::{Graph, ValueId};
use modelc_runtime::executable::Executable;

/// One program: a graph, and the values it hands back to the host, by name. Its `param`
/// leaves are the executable's persistent buffers (shared by name across programs); its
/// `input` leaves are what each call passes; its `updates` write buffers in place.
#[derive(Clone, Debug)]
pub struct Program {
    pub name: String,
    pub graph: Graph,
    pub returns: Vec<(String, ValueId)>,
}

impl Program {
    /// A program returning the graph's outputs, named `output`, `output1`, ...
    pub fn of_outputs(name: &str, graph: Graph) -> Program {
        let returns = graph
            .outputs
            .iter()
            .enumerate()
            .map(|(i, v)| (if i == 0 { "output".to_string() } else { format!("output{i}") }, *v))
            .collect();
        Program { name: name.to_string(), graph, returns }
    }
}

pub trait Backend {
    fn name(&self) -> &'static str;
    /// Compiles the programs into one executable whose buffers start zeroed: the
    /// `buffers` declared here (the model's parameters, whether or not a program reads
    /// them), then every other `param` leaf of the programs (optimizer state, gradient
    /// accumulators).
    fn compile(
        &self,
        buffers: Vec<(String, TensorType)>,
        programs: Vec<Program>,
    ) -> Result<Box<dyn Executable>, String>;
}

/// Programs lowered to Kernel IR (their fusion groups become kernels) and run by the Kernel
/// IR reference executor: the oracle every code generator is tested against.
pub struct KernelReference {
    pub rounding: kernel::Rounding,
}

impl Backend for KernelReference {
    fn name(&self) -> &'static str {
        "kernel"
    }

    fn compile(
        &self,
        buffers: Vec<(String, TensorType)>,
        programs: Vec<Program>,
    ) -> Result<Box<dyn Executable>, String> {
        let mut declared = Vec::with_capacity(buffers.len());
        for (name, ty) in buffers {
            let shape: Option<Vec<usize>> =
                ty.shape.iter().map(|d| d.as_constant().and_then(|c| usize::try_from(c).ok())).collect();
            let shape = shape.ok_or_else(|| format!("buffer `{name}` has a symbolic shape {}", ty.shape_text()))?;
            declared.push((name, ty.dtype, shape));
        }
        let mut lowered = Vec::with_capacity(programs.len());
        for p in programs {
            let k = crate::kernel::lower::lower(&p.graph, &p.returns)
                .map_err(|e| format!("lowering program `{}` to Kernel IR: {e}", p.name))?;
            lowered.push((p.name, k));
        }
        Ok(Box::new(kernel::compile(declared, lowered, self.rounding)?))
    }
}

/// The backends `--backend` names: built, or planned behind a cargo feature.
pub const BACKENDS: &[(&str, Option<&str>, &str)] = &[
    ("interp", None, "the reference interpreter (f64 oracle, each result rounded to its dtype)"),
    ("kernel", None, "the Kernel IR reference executor (fused kernels, planned memory, plain loops)"),
    ("cpu", Some("cpu"), "the Cranelift CPU JIT"),
    ("cuda", Some("cuda"), "CUDA through NVRTC"),
    ("mlir", Some("mlir"), "MLIR through melior"),
];

/// The backend called `name`, or why it cannot be had.
pub fn select(name: &str) -> Result<Box<dyn Backend>, String> {
    match BACKENDS.iter().find(|(n, _, _)| *n == name) {
        Some(("interp", _, _)) => Ok(Box::new(interp::Interp::NATIVE)),
        Some(("kernel", _, _)) => Ok(Box::new(KernelReference { rounding: kernel::Rounding::Native })),
        Some((n, Some(feature), what)) => Err(format!(
            "`--backend {n}` ({what}) is not compiled into this modelc: it needs the cargo feature `{feature}`, which does not exist yet (the backend is not built); use `--backend interp`"
        )),
        _ => {
            let names: Vec<&str> = BACKENDS.iter().map(|(n, _, _)| *n).collect();
            let hint = match crate::error::suggest(name, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("the backends are {}", names.join(", ")),
            };
            Err(format!("unknown backend `{name}` for `--backend`: {hint}"))
        }
    }
}
