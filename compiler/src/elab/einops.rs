//! einops patterns for `rearrange`: `"b t (h d) -> b h t d"` with `h: heads` becomes a
//! plan of three movement ops: reshape to the elementary axes, transpose them into the
//! output order, reshape into the output groups. Sizes are symbolic dims; an axis whose
//! size is not given is solved from its group by exact division.

use crate::graph::dim::Dim;
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The input reshaped to one dim per elementary axis (size-1 literals dropped).
    pub split: Vec<Dim>,
    /// The elementary axes in output order.
    pub perm: Vec<usize>,
    pub output: Vec<Dim>,
}

/// A group is one input or output dim: `t`, `(h d)`, or the literal `1`.
fn parse_side(side: &str) -> Result<Vec<Vec<String>>, String> {
    let mut groups = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let spaced = side.replace('(', " ( ").replace(')', " ) ");
    for tok in spaced.split_whitespace() {
        match tok {
            "(" if current.is_some() => return Err("groups cannot nest".into()),
            "(" => current = Some(Vec::new()),
            ")" => groups.push(current.take().ok_or("`)` without `(`")?),
            name => {
                let ok = name == "1"
                    || name.chars().all(|c| c.is_alphanumeric() || c == '_')
                        && !name.starts_with(|c: char| c.is_ascii_digit());
                if !ok {
                    return Err(format!("`{name}` is not an axis name"));
                }
                match current.as_mut() {
                    Some(g) => g.push(name.to_string()),
                    None => groups.push(vec![name.to_string()]),
                }
            }
        }
    }
    if current.is_some() {
        return Err("unclosed `(`".into());
    }
    Ok(groups)
}

pub fn plan(pattern: &str, shape: &[Dim], sizes: &HashMap<String, Dim>) -> Result<Plan, String> {
    let (lhs, rhs) = pattern.split_once("->").ok_or("an einops pattern has the form `in -> out`")?;
    let (lhs, rhs) = (parse_side(lhs)?, parse_side(rhs)?);
    if lhs.len() != shape.len() {
        return Err(format!("the pattern's input has {} dims, the tensor {}", lhs.len(), shape.len()));
    }
    let mut axes: Vec<(String, Dim)> = Vec::new();
    for (group, dim) in lhs.iter().zip(shape) {
        let names: Vec<&String> = group.iter().filter(|n| *n != "1").collect();
        let mut known = Dim::constant(1);
        let mut unknown = None;
        for n in &names {
            if axes.iter().any(|(a, _)| a == *n) {
                return Err(format!("axis `{n}` appears twice in the input"));
            }
            match sizes.get(n.as_str()) {
                Some(s) => known = known.mul(s),
                None if names.len() == 1 => known = known.mul(dim),
                None if unknown.is_none() => unknown = Some((*n).clone()),
                None => return Err(format!("group ({}) has more than one axis of unknown size", group.join(" "))),
            }
        }
        let solved = match &unknown {
            Some(_) => Some(dim.div_exact(&known).ok_or_else(|| format!("{dim} is not divisible by {known}"))?),
            None if known != *dim => {
                return Err(format!("group ({}) has size {known}, but the dim is {dim}", group.join(" ")))
            }
            None => None,
        };
        for n in names {
            // Solved, given, or (the group's only named axis, as in `(1 h)`) the dim itself.
            let size = match (&unknown, &solved) {
                (Some(u), Some(s)) if u == n => s.clone(),
                _ => sizes.get(n.as_str()).cloned().unwrap_or_else(|| dim.clone()),
            };
            axes.push((n.clone(), size));
        }
    }
    let mut perm = Vec::new();
    let mut output = Vec::new();
    for group in &rhs {
        let mut size = Dim::constant(1);
        for n in group {
            if n == "1" {
                continue;
            }
            let i = axes
                .iter()
                .position(|(a, _)| a == n)
                .ok_or_else(|| format!("axis `{n}` of the output is not in the input"))?;
            if perm.contains(&i) {
                return Err(format!("axis `{n}` appears twice in the output"));
            }
            perm.push(i);
            size = size.mul(&axes[i].1);
        }
        output.push(size);
    }
    if perm.len() != axes.len() {
        let dropped: Vec<&str> =
            axes.iter().enumerate().filter(|(i, _)| !perm.contains(i)).map(|(_, a)| a.0.as_str()).collect();
        return Err(format!("axis `{}` of the input is missing from the output", dropped.join("`, `")));
    }
    Ok(Plan { split: axes.into_iter().map(|(_, d)| d).collect(), perm, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Dim {
        s.parse::<i64>().map(Dim::constant).unwrap_or_else(|_| Dim::symbol(s))
    }

    #[test]
    fn splits_heads_and_merges_them_back() {
        let sizes = HashMap::from([("h".to_string(), d("8"))]);
        let p = plan("b t (h k) -> b h t k", &[d("B"), d("T"), d("512")], &sizes).expect("valid");
        assert_eq!(p.split, vec![d("B"), d("T"), d("8"), d("64")]);
        assert_eq!(p.perm, vec![0, 2, 1, 3]);
        assert_eq!(p.output, vec![d("B"), d("8"), d("T"), d("64")]);
        let back = plan("b h t k -> b t (h k)", &p.output, &HashMap::new()).expect("valid");
        assert_eq!(back.output, vec![d("B"), d("T"), d("512")]);
    }

    #[test]
    fn adds_unit_axes_and_flattens_symbolic_dims() {
        let p = plan("t -> t 1", &[d("T")], &HashMap::new()).expect("valid");
        assert_eq!(p.output, vec![d("T"), d("1")]);
        let p = plan("b t d -> (b t) d", &[d("B"), d("T"), d("64")], &HashMap::new()).expect("valid");
        assert_eq!(p.output, vec![d("B").mul(&d("T")), d("64")]);
        let sizes = HashMap::from([("b".to_string(), d("B"))]);
        let p = plan("(b t) d -> b t d", &p.output, &sizes).expect("valid");
        assert_eq!(p.output, vec![d("B"), d("T"), d("64")]);
    }

    #[test]
    fn rejects_what_does_not_fit() {
        let sizes = HashMap::from([("h".to_string(), d("3"))]);
        assert!(plan("b (h k) -> b h k", &[d("B"), d("512")], &sizes).is_err());
        assert!(plan("b t -> b", &[d("B"), d("T")], &HashMap::new()).is_err());
        assert!(plan("b t d -> b t", &[d("B"), d("T")], &HashMap::new()).is_err());
    }

    #[test]
    fn a_group_with_one_named_axis_takes_the_dim() {
        let p = plan("b (1 h) -> b h", &[d("B"), d("T")], &HashMap::new()).expect("valid");
        assert_eq!(p.output, vec![d("B"), d("T")]);
    }
}
