//! Instance tree → the `modelc inspect` report: parameters per block as a tree, with
//! counts, shares and the first line of each doc comment, and the exact total.
//! FLOPs and memory are computed from the Graph IR's op costs, which come with `forward`
//! elaboration; until then the report says so instead of estimating from `6N`.

use crate::elab::instance::{Instance, Member};
use crate::elab::value::Value;
use modelc_grammar::ast::CopiesKind;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub name: String,
    /// The block's name, or `param` for a learned tensor.
    pub kind: String,
    /// `repeat` or `stack` copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies: Option<u64>,
    /// Learned parameters in this node, all copies included.
    pub params: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Node>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub args: serde_json::Map<String, serde_json::Value>,
    pub params: Params,
    /// Not computed yet: needs the Graph IR.
    pub flops: Option<u64>,
    pub memory: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub total: u64,
    pub tree: Vec<Node>,
}

pub fn report(instance: &Instance) -> Report {
    let args = instance.args.iter().map(|(k, v)| (k.clone(), json(v))).collect();
    Report {
        model: instance.block_name.clone(),
        args,
        params: Params { total: instance.param_count(), tree: children(instance, 1) },
        flops: None,
        memory: None,
    }
}

/// The doc comment's first sentence, shortened to fit a table column.
fn first_line(docs: &[String]) -> Option<String> {
    const MAX: usize = 60;
    let text = docs.join(" ");
    let sentence = match text.find(". ") {
        Some(i) => &text[..=i],
        None => text.trim(),
    };
    let sentence = sentence.trim();
    if sentence.is_empty() {
        return None;
    }
    if sentence.chars().count() <= MAX {
        return Some(sentence.to_string());
    }
    let cut: String = sentence.chars().take(MAX - 1).collect();
    Some(format!("{}…", cut.trim_end()))
}

fn children(instance: &Instance, multiplier: u64) -> Vec<Node> {
    instance
        .members
        .iter()
        .filter_map(|m| match m {
            Member::Weight(w) => Some(Node {
                name: w.name.clone(),
                kind: "param".into(),
                copies: None,
                params: w.count() * multiplier,
                shape: Some(w.shape.clone()),
                doc: first_line(&w.docs),
                children: Vec::new(),
            }),
            Member::Buffer { .. } => None,
            Member::Sub(s) => {
                let n = s.multiplier();
                Some(Node {
                    name: s.name.clone(),
                    kind: s.instance.block_name.clone(),
                    copies: s.copies.map(|(_, n)| n as u64),
                    params: s.instance.param_count() * n * multiplier,
                    shape: None,
                    doc: first_line(&s.docs).or_else(|| first_line(&s.instance.docs)),
                    children: children(&s.instance, n * multiplier)
                        .into_iter()
                        .map(|mut c| {
                            // Inside a stack, each tensor has a leading copy dim.
                            if let (Some((CopiesKind::Stack, k)), Some(shape)) = (s.copies, c.shape.as_mut()) {
                                shape.insert(0, k);
                            }
                            c
                        })
                        .collect(),
                })
            }
        })
        .collect()
}

fn json(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(i) => (*i).into(),
        Value::Float(x) => serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, Into::into),
        Value::Bool(b) => (*b).into(),
        Value::Str(s) => s.clone().into(),
        Value::None => serde_json::Value::Null,
        other => other.to_string().into(),
    }
}

/// Groups digits in threes: 6738415616 → 6,738,415,616.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human-readable table.
pub fn render(report: &Report) -> String {
    let mut rows: Vec<(String, String, String, String, String)> = Vec::new();
    fn walk(nodes: &[Node], depth: usize, total: u64, rows: &mut Vec<(String, String, String, String, String)>) {
        for n in nodes {
            let name =
                format!("{}{}{}", "  ".repeat(depth), n.name, n.copies.map(|c| format!(" ×{c}")).unwrap_or_default());
            let kind = match &n.shape {
                Some(shape) => format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
                None => n.kind.clone(),
            };
            let share = if total == 0 { 0.0 } else { 100.0 * n.params as f64 / total as f64 };
            rows.push((name, kind, thousands(n.params), format!("{share:.2}%"), n.doc.clone().unwrap_or_default()));
            walk(&n.children, depth + 1, total, rows);
        }
    }
    walk(&report.params.tree, 0, report.params.total, &mut rows);
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(4);
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0).max(5);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(thousands(report.params.total).len());
    let mut out = format!("model {}: {} parameters\n\n", report.model, thousands(report.params.total));
    out.push_str(&format!("{:w0$}  {:w1$}  {:>w2$}  {:>7}\n", "name", "block", "params", "share"));
    for (name, kind, params, share, doc) in rows {
        let line = format!("{name:w0$}  {kind:w1$}  {params:>w2$}  {share:>7}  {doc}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{:w0$}  {:w1$}  {:>w2$}\n", "total", "", thousands(report.params.total)));
    out.push_str("\nFLOPs and memory: not computed yet (they come from the Graph IR's op costs).\n");
    out
}
