//! Text generation through a backend's executable: the model's forward (`forward`) for
//! the uncached path, its decode step (`decode`, from `passes::kv_cache`) for incremental
//! decoding, the runtime's sampling, and beam search. Both paths give the same logits; the
//! cached one does `O(T)` work per token instead of `O(T²)`. The parameters stay in the
//! executable; each call sends tokens (and the caches, which still travel as inputs).
//! `command.rs` is `modelc generate`.

pub mod command;

use modelc_compiler::backend::{Backend, Program};
use modelc_compiler::graph::types::TensorType;
use modelc_compiler::graph::Graph;
use modelc_compiler::passes::kv_cache::{self, CacheSlot};
use modelc_runtime::checkpoint::Tensors;
use modelc_runtime::executable::{CallOptions, Executable, HostTensor};
use modelc_runtime::rng::Rng;
use modelc_runtime::sampling::{log_softmax, penalised, Sampling};
use std::cell::RefCell;

/// A decoder ready to generate: its compiled programs (holding the parameters), caches
/// and token input.
pub struct Model {
    exe: RefCell<Box<dyn Executable>>,
    pub slots: Vec<CacheSlot>,
    pub token_input: String,
}

impl Model {
    /// Compiles `full` (the model's forward) and its decode step on `backend`, with the
    /// model's parameter buffers `buffers` filled from `params`.
    /// `memory` is the check before anything of a call's size is allocated: the longest
    /// sequence (`[rows, len]`) against `--memory-limit`.
    pub fn new(
        backend: &dyn Backend,
        full: Graph,
        buffers: Vec<(String, TensorType)>,
        (params, from): (Tensors, &str),
        memory: ((usize, usize), Option<u64>),
    ) -> Result<Model, String> {
        let token_input = crate::train::token_inputs(&full);
        let [token_input] = token_input.as_slice() else {
            return Err(format!(
                "generation needs a model with one token input `[B, T]`; this one takes {}",
                if token_input.is_empty() { "none".to_string() } else { token_input.join(", ") }
            ));
        };
        let logits = full.ty(*full.outputs.first().ok_or("the model has no output")?);
        if logits.rank() != 3 || !logits.dtype.is_float() {
            return Err(format!("generation needs logits `[B, T, vocab]`; the model returns {logits}"));
        }
        let (step, slots) = kv_cache::decode_step(&full)?;
        // The decode step is a new graph: fused like every other program.
        let step = modelc_compiler::passes::fusion::run(step)?;
        let decode = Program {
            name: "decode".into(),
            returns: step.outputs.iter().enumerate().map(|(i, v)| (format!("out{i}"), *v)).collect(),
            graph: step,
        };
        let programs = vec![Program::of_outputs("forward", full), decode];
        let mut exe = backend.compile(buffers, programs)?;
        let ((rows, len), limit) = memory;
        let call =
            modelc_runtime::memory::PlannedCall { program: "forward", inputs: vec![(token_input, vec![rows, len])] };
        let remedies = "lower `--max-tokens` or `--beams`, or shorten the prompt";
        modelc_runtime::memory::check(exe.as_ref(), &[call], limit, remedies)?;
        crate::train::write_params(exe.as_mut(), params, from)?;
        Ok(Model { exe: RefCell::new(exe), slots, token_input: token_input.clone() })
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Beam search with this many beams (0: sample or pick greedily instead).
    pub beams: usize,
    /// Beam search's length normalisation: scores are `log p / length^alpha`.
    pub length_alpha: f64,
    pub seed: u64,
    /// Incremental decoding with the KV cache (else the whole sequence every step).
    pub cache: bool,
    pub eos: Option<u32>,
}

/// The generated tokens (prompt excluded) and the logits each was chosen from.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub logits: Vec<Vec<f64>>,
}

fn token_tensor(rows: &[&[u32]]) -> HostTensor {
    let t = rows.first().map_or(0, |r| r.len());
    HostTensor::new(vec![rows.len(), t], rows.iter().flat_map(|r| r.iter().map(|&x| f64::from(x))).collect())
}

/// The last position's logits of every row of a `[B, T, V]` tensor.
fn last_rows(logits: &HostTensor) -> Vec<Vec<f64>> {
    let (b, t, v) = (logits.shape[0], logits.shape[1], logits.shape[2]);
    (0..b).map(|i| logits.data[(i * t + t - 1) * v..(i * t + t) * v].to_vec()).collect()
}

/// The KV cache of a batch of sequences: per slot, keys and values `[B, Hkv, P, hd]`.
struct Cache {
    tensors: Vec<HostTensor>,
    past: usize,
}

impl Model {
    fn empty_cache(&self, batch: usize) -> Cache {
        let tensors = self
            .slots
            .iter()
            .flat_map(|s| {
                [
                    HostTensor::new(vec![batch, s.heads, 0, s.head_dim], Vec::new()),
                    HostTensor::new(vec![batch, s.heads, 0, s.v_dim], Vec::new()),
                ]
            })
            .collect();
        Cache { tensors, past: 0 }
    }

    /// Runs the decode step on `rows` (equal lengths) after `cache`, extending it; returns
    /// each row's last logits.
    fn step(&self, rows: &[&[u32]], cache: &mut Cache) -> Result<Vec<Vec<f64>>, String> {
        let mut inputs = vec![
            (self.token_input.as_str(), token_tensor(rows)),
            (kv_cache::PAST, HostTensor::scalar(cache.past as f64)),
        ];
        let mut tensors = std::mem::take(&mut cache.tensors).into_iter();
        for slot in &self.slots {
            let (k, v) = (tensors.next(), tensors.next());
            let (Some(k), Some(v)) = (k, v) else { return Err("the KV cache lost a slot".into()) };
            inputs.push((slot.k_input.as_str(), k));
            inputs.push((slot.v_input.as_str(), v));
        }
        let mut out: Vec<HostTensor> =
            self.exe.borrow_mut().call("decode", inputs, CallOptions::default())?.into_iter().map(|(_, t)| t).collect();
        let mut take = |i: usize| std::mem::replace(&mut out[i], HostTensor::new(vec![0], Vec::new()));
        cache.tensors = self.slots.iter().flat_map(|s| [take(s.k_output), take(s.v_output)]).collect();
        cache.past += rows.first().map_or(0, |r| r.len());
        Ok(last_rows(&out[0]))
    }

    /// The whole forward on `tokens`: the last position's logits.
    pub fn full_logits(&self, tokens: &[u32]) -> Result<Vec<f64>, String> {
        let inputs = vec![(self.token_input.as_str(), token_tensor(&[tokens]))];
        let out = self.exe.borrow_mut().call("forward", inputs, CallOptions::default())?;
        let logits = out.into_iter().next().map(|(_, t)| t).ok_or("the model returned nothing")?;
        Ok(last_rows(&logits).remove(0))
    }

    /// Generates from `req`, calling `emit` with each chosen token as soon as it is known
    /// (beam search knows its tokens only at the end).
    pub fn generate(&self, req: &Request, emit: &mut dyn FnMut(u32)) -> Result<Generated, String> {
        if req.prompt.is_empty() {
            return Err("the prompt is empty: generation needs at least one token to start from".into());
        }
        if req.beams >= 1 {
            let out = self.beam_search(req)?;
            out.tokens.iter().for_each(|&t| emit(t));
            return Ok(out);
        }
        let mut rng = Rng::for_name(req.seed, "generate");
        let mut seq = req.prompt.clone();
        let mut out = Generated::default();
        let mut cache = self.empty_cache(1);
        let mut logits = if req.cache { self.step(&[&seq], &mut cache)?.remove(0) } else { self.full_logits(&seq)? };
        while out.tokens.len() < req.max_tokens {
            let next = req.sampling.pick(&logits, &seq, &mut rng);
            out.logits.push(logits);
            out.tokens.push(next);
            seq.push(next);
            emit(next);
            if Some(next) == req.eos || out.tokens.len() == req.max_tokens {
                break;
            }
            logits = if req.cache { self.step(&[&[next]], &mut cache)?.remove(0) } else { self.full_logits(&seq)? };
        }
        Ok(out)
    }

    /// Beam search: keeps the `beams` best partial sequences by total log-probability
    /// (of the penalised logits), one batch row each with its own cache; finished
    /// sequences (EOS) and, at the end, the live ones are ranked by
    /// `log p / length^alpha`.
    fn beam_search(&self, req: &Request) -> Result<Generated, String> {
        #[derive(Clone)]
        struct Beam {
            seq: Vec<u32>,
            logp: f64,
            logits: Vec<Vec<f64>>,
        }
        let n = req.beams;
        let norm = |b: &Beam| b.logp / ((b.seq.len() - req.prompt.len()).max(1) as f64).powf(req.length_alpha);
        let mut beams = vec![Beam { seq: req.prompt.clone(), logp: 0.0, logits: Vec::new() }];
        let mut finished: Vec<Beam> = Vec::new();
        let mut cache = self.empty_cache(1);
        let mut rows =
            if req.cache { self.step(&[&req.prompt], &mut cache)? } else { vec![self.full_logits(&req.prompt)?] };
        for _ in 0..req.max_tokens {
            // Every extension of every beam, best first (ties: earlier beam, lower id).
            let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
            for (b, (beam, logits)) in beams.iter().zip(&rows).enumerate() {
                let lp = log_softmax(&penalised(logits, &beam.seq, req.sampling.repetition_penalty));
                candidates.extend(lp.iter().enumerate().map(|(id, l)| (beam.logp + l, b, id as u32)));
            }
            candidates.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
            let mut next: Vec<(usize, Beam)> = Vec::new();
            for (logp, b, id) in candidates {
                let mut beam = beams[b].clone();
                beam.seq.push(id);
                beam.logp = logp;
                beam.logits.push(rows[b].clone());
                if Some(id) == req.eos {
                    finished.push(beam);
                } else {
                    next.push((b, beam));
                }
                if next.len() == n || finished.len() >= n {
                    break;
                }
            }
            if finished.len() >= n || next.is_empty() {
                beams.clear();
                break;
            }
            let parents: Vec<usize> = next.iter().map(|(b, _)| *b).collect();
            beams = next.into_iter().map(|(_, beam)| beam).collect();
            if beams[0].seq.len() - req.prompt.len() >= req.max_tokens {
                break;
            }
            if req.cache {
                cache.tensors = cache.tensors.iter().map(|t| gather_rows(t, &parents)).collect();
                let tails: Vec<[u32; 1]> = beams.iter().map(|b| [*b.seq.last().unwrap_or(&0)]).collect();
                let tails: Vec<&[u32]> = tails.iter().map(|t| t.as_slice()).collect();
                rows = self.step(&tails, &mut cache)?;
            } else {
                rows = beams.iter().map(|b| self.full_logits(&b.seq)).collect::<Result<_, _>>()?;
            }
        }
        finished.extend(beams);
        let best = finished
            .into_iter()
            .max_by(|a, b| norm(a).total_cmp(&norm(b)).then(b.seq.cmp(&a.seq)))
            .ok_or("beam search produced nothing")?;
        Ok(Generated { tokens: best.seq[req.prompt.len()..].to_vec(), logits: best.logits })
    }
}

/// Rows `index` of the leading axis of `t`, in that order.
fn gather_rows(t: &HostTensor, index: &[usize]) -> HostTensor {
    let row = t.data.len() / t.shape[0].max(1);
    let data = index.iter().flat_map(|&i| t.data[i * row..(i + 1) * row].iter().copied()).collect();
    let mut shape = t.shape.clone();
    shape[0] = index.len();
    HostTensor::new(shape, data)
}
