//! The interface between the drivers (the training loop, `run`, `generate`, `merge`) and a
//! backend's compiled programs: an `Executable` owns its persistent buffers (parameters,
//! optimizer state, gradient accumulators) between calls, takes per-call inputs from the
//! host and hands back only what a program returns or what the host asks to read.
//!
//! A backend (the reference interpreter today; the CPU JIT, CUDA and MLIR later) compiles
//! the programs of a workload into one `Executable`. The runtime sees names, shapes and
//! host tensors only, never the IR the programs were compiled from.

use std::fmt;

/// A dense tensor on the host, row-major, each element as `f64` (integers exactly).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> HostTensor {
        HostTensor { shape, data }
    }

    pub fn scalar(x: f64) -> HostTensor {
        HostTensor { shape: Vec::new(), data: vec![x] }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Bytes moved between the host and an executable's memory, counted at each element's
/// dtype size, and the number of program calls. The interpreter keeps its buffers in
/// host memory, but counts what a device backend would have to copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub to_device: u64,
    pub to_host: u64,
    pub calls: u64,
}

impl Traffic {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            to_device: self.to_device - earlier.to_device,
            to_host: self.to_host - earlier.to_host,
            calls: self.calls - earlier.calls,
        }
    }
}

impl fmt::Display for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} B to the device, {} B to the host, {} calls", self.to_device, self.to_host, self.calls)
    }
}

/// How to run one call of a program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// Dropout and router noise are active only in training.
    pub training: bool,
    /// Seeds dropout masks and router noise (a function of the run's seed, step and
    /// micro-step, so that a resumed run replays them).
    pub seed: u64,
    /// Stop at the first op whose output is not finite although its inputs are, and say
    /// which (`--detect-anomaly`); the reference interpreter checks every value.
    pub check_finite: bool,
}

/// A persistent buffer of an executable.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferInfo {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Compiled programs and the buffers they share.
pub trait Executable {
    /// The backend that compiled it (`interp`, ...), for banners and errors.
    fn backend(&self) -> &str;

    /// Runs `program` on the host `inputs` (by input name); returns the values the program
    /// declares as its returns, by name, in order. Buffers the program updates are updated
    /// in place.
    fn call(
        &mut self,
        program: &str,
        inputs: Vec<(&str, HostTensor)>,
        options: CallOptions,
    ) -> Result<Vec<(String, HostTensor)>, String>;

    /// The persistent buffers, in a fixed order.
    fn buffers(&self) -> Vec<BufferInfo>;

    /// Copies a persistent buffer to the host.
    fn read(&mut self, buffer: &str) -> Result<HostTensor, String>;

    /// Overwrites a persistent buffer from the host (the shape must match its own).
    fn write(&mut self, buffer: &str, value: HostTensor) -> Result<(), String>;

    /// Everything moved between host and device so far.
    fn traffic(&self) -> Traffic;

    /// The peak of live activation bytes during the last call, where the backend measures
    /// it (the interpreter does, freeing each value after its last use).
    fn activations_peak(&self) -> Option<u64>;

    /// What a call of `program` with inputs of these shapes would need, as this backend
    /// stores values, before anything is allocated for it (`memory::check`).
    fn plan(&self, program: &str, inputs: &[(&str, Vec<usize>)]) -> Result<crate::memory::MemoryPlan, String>;

    /// The memory this executable's device has free now, and where the number comes from.
    fn memory_available(&self) -> Option<(u64, String)>;
}
