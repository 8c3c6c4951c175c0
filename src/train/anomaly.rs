//! `--detect-anomaly`: a diverged step → the first op whose output went non-finite. The
//! step is re-run through the reference interpreter, on the parameters it started from
//! (the `apply` program withheld its update) and the same micro-batches, stopping at the
//! first op that made a NaN or an infinity from finite arguments.

use modelc_compiler::backend::{Backend, Program};
use modelc_runtime::executable::Executable;
use modelc_runtime::train::{read_params, Plan};

/// The interpreter's report on `step` of `plan` (`None`: every op of the step's forward
/// and backward stayed finite, so the divergence is in the update itself).
pub fn locate(
    step_program: Program,
    exe: &mut dyn Executable,
    instance: &modelc_compiler::elab::instance::Instance,
    plan: &Plan,
    step: u64,
) -> Result<Option<String>, String> {
    let params = read_params(exe, &plan.params)?;
    let buffers = crate::train::model_buffers(instance);
    let mut oracle = modelc_compiler::backend::interp::Interp::NATIVE.compile(buffers, vec![step_program])?;
    crate::train::write_params(oracle.as_mut(), params, "the executable")?;
    for micro in 0..plan.accumulate {
        let (names, tensors): (Vec<String>, Vec<_>) = plan.micro_inputs(step, micro).into_iter().unzip();
        let inputs = names.iter().map(String::as_str).zip(tensors).collect();
        let mut options = plan.call_options(step, micro);
        options.check_finite = true;
        if let Err(why) = oracle.call(modelc_runtime::train::names::STEP, inputs, options) {
            let at = if plan.accumulate > 1 {
                format!(" (micro-batch {} of {})", micro + 1, plan.accumulate)
            } else {
                String::new()
            };
            return Ok(Some(format!("{why}{at}")));
        }
    }
    Ok(None)
}
