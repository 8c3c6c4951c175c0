//! Model graph → training graph: appends the recipe's objective, so that the graph's one
//! output is the scalar loss (the model's loss plus every `aux_loss`). Autodiff will
//! differentiate this graph.

use crate::graph::dim::Dim;
use crate::graph::op::{Binary, Op};
use crate::graph::types::{DType, TensorType};
use crate::graph::Graph;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// Next-token prediction: logits `[B, T, V]` of tokens `[B, T]` against `targets`
    /// `[B, T]` (the tokens shifted by one), mean cross-entropy.
    CausalLm,
    /// Masked-language modelling: the same loss, against the original tokens at the masked
    /// positions (the data pipeline corrupts the input and sets the other targets to -100).
    Mlm,
}

impl Objective {
    /// The recipe's `objective = ...` word, or what is missing.
    pub fn parse(name: &str) -> Result<Objective, String> {
        match name {
            "causal_lm" => Ok(Objective::CausalLm),
            "mlm" => Ok(Objective::Mlm),
            "span_corruption" => Err(format!("the `{name}` objective is not implemented yet")),
            other => Err(format!("unknown objective `{other}`; objectives are causal_lm, mlm and span_corruption")),
        }
    }
}

/// Appends `objective` to a model graph; the result's single output is the loss.
pub fn apply(mut graph: Graph, objective: Objective) -> Result<Graph, String> {
    match objective {
        // Token cross-entropy: what differs between the two is the data, not the graph.
        Objective::CausalLm | Objective::Mlm => {
            let logits = *graph.outputs.first().ok_or("the model returns nothing")?;
            let lt = graph.ty(logits).clone();
            let tokens = graph
                .nodes
                .iter()
                .position(|n| matches!(n.op, Op::Input { .. }) && !n.ty.dtype.is_float())
                .ok_or("the objective needs a model whose `forward` takes integer token ids")?;
            let tt = graph.nodes[tokens].ty.clone();
            if lt.rank() != tt.rank() + 1 || lt.shape[..tt.rank()] != tt.shape[..] {
                return Err(format!(
                    "the objective needs logits [B, T, V] for tokens [B, T]; the model returns {} for {}",
                    lt.shape_text(),
                    tt.shape_text()
                ));
            }
            let n = tt.numel();
            let v = lt.shape.last().cloned().unwrap_or_else(|| Dim::constant(1));
            let targets = graph.push(Op::Input { name: "targets".into() }, Vec::new(), tt.clone(), "objective");
            let flat_logits = graph.push(
                Op::Reshape { shape: vec![n.clone(), v.clone()] },
                vec![logits],
                TensorType::new(lt.dtype, vec![n.clone(), v]),
                "objective",
            );
            let flat_targets = graph.push(
                Op::Reshape { shape: vec![n.clone()] },
                vec![targets],
                TensorType::new(tt.dtype, vec![n]),
                "objective",
            );
            let scalar = TensorType::scalar(DType::F32);
            let mut loss = graph.push(
                Op::CrossEntropy { ignore: -100 },
                vec![flat_logits, flat_targets],
                scalar.clone(),
                "objective",
            );
            for (_, aux) in graph.aux_losses.clone() {
                loss = graph.push(Op::Binary(Binary::Add), vec![loss, aux], scalar.clone(), "objective");
            }
            graph.outputs = vec![loss];
            Ok(graph)
        }
    }
}
