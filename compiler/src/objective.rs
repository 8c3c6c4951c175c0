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
    /// T5 span corruption: the decoder's logits against the spans cut from the encoder's
    /// input, each after its sentinel.
    SpanCorruption,
}

/// Appends `objective` to a model graph; the result's single output is the loss.
pub fn apply(mut graph: Graph, objective: Objective) -> Result<Graph, String> {
    match objective {
        // Token cross-entropy: what differs between the two is the data, not the graph.
        Objective::CausalLm | Objective::Mlm | Objective::SpanCorruption => {
            let logits = *graph.outputs.first().ok_or("the model returns nothing")?;
            let lt = graph.ty(logits).clone();
            // Integer targets shaped like the logits without their last axis.
            if lt.rank() < 2 {
                return Err(format!("the objective needs logits [..., V], the model returns {}", lt.shape_text()));
            }
            let tt = TensorType::new(DType::I32, lt.shape[..lt.rank() - 1].to_vec());
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
