//! Symbolic dims: a shape entry is a polynomial with integer coefficients over the
//! symbols that `forward` signatures introduce (`B`, `T`, `S`). The canonical form
//! (sorted monomials, no zero terms) makes equality exact: `B * T` from a reshape equals
//! `T * B` from a signature, and `4096` is just a constant polynomial.
//!
//! Coefficients saturate instead of overflowing: a dim beyond `i64` comes only from a
//! program with absurd sizes, which is then refused where sizes are checked (the
//! interpreter's size limit) instead of panicking in the arithmetic.

use std::collections::BTreeMap;
use std::fmt;

/// A product of symbols, sorted, with repetition (`B*T*T`); empty for the constant term.
type Monomial = Vec<String>;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dim {
    terms: BTreeMap<Monomial, i64>,
}

impl Dim {
    pub fn constant(n: i64) -> Dim {
        let mut terms = BTreeMap::new();
        if n != 0 {
            terms.insert(Vec::new(), n);
        }
        Dim { terms }
    }

    pub fn symbol(name: &str) -> Dim {
        Dim { terms: BTreeMap::from([(vec![name.to_string()], 1)]) }
    }

    /// The value when the dim does not depend on any symbol.
    pub fn as_constant(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    pub fn is_symbolic(&self) -> bool {
        self.as_constant().is_none()
    }

    /// The symbols the dim mentions.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.terms.keys().flatten().map(String::as_str)
    }

    pub fn add(&self, other: &Dim) -> Dim {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let t = terms.entry(m.clone()).or_insert(0);
            *t = t.saturating_add(*c);
        }
        terms.retain(|_, c| *c != 0);
        Dim { terms }
    }

    pub fn neg(&self) -> Dim {
        Dim { terms: self.terms.iter().map(|(m, c)| (m.clone(), c.saturating_neg())).collect() }
    }

    pub fn sub(&self, other: &Dim) -> Dim {
        self.add(&other.neg())
    }

    pub fn mul(&self, other: &Dim) -> Dim {
        let mut terms: BTreeMap<Monomial, i64> = BTreeMap::new();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &other.terms {
                let mut m: Monomial = ma.iter().chain(mb).cloned().collect();
                m.sort();
                let t = terms.entry(m).or_insert(0);
                *t = t.saturating_add(ca.saturating_mul(*cb));
            }
        }
        terms.retain(|_, c| *c != 0);
        Dim { terms }
    }

    /// Exact division by a constant (`(2 * T) / 2`), or by another dim when it is a
    /// factor of every term (`B * T / T`).
    pub fn div_exact(&self, other: &Dim) -> Option<Dim> {
        if let Some(k) = other.as_constant() {
            if k == 0 || self.terms.values().any(|c| c.checked_rem(k) != Some(0)) {
                return None;
            }
            return Some(Dim { terms: self.terms.iter().map(|(m, c)| (m.clone(), c.saturating_div(k))).collect() });
        }
        // A single monomial divisor: remove its symbols from every term.
        if other.terms.len() != 1 {
            return None;
        }
        let (dm, dc) = other.terms.iter().next()?;
        let mut terms = BTreeMap::new();
        for (m, c) in &self.terms {
            if c.checked_rem(*dc) != Some(0) {
                return None;
            }
            let mut rest = m.clone();
            for s in dm {
                let i = rest.iter().position(|x| x == s)?;
                rest.remove(i);
            }
            terms.insert(rest, c.saturating_div(*dc));
        }
        Some(Dim { terms })
    }
}

impl Dim {
    /// The value with every symbol given by `value`, or `None` if one is missing.
    pub fn eval(&self, value: &dyn Fn(&str) -> Option<i64>) -> Option<i128> {
        let mut total: i128 = 0;
        for (m, c) in &self.terms {
            let mut term = *c as i128;
            for s in m {
                term = term.checked_mul(value(s)? as i128)?;
            }
            total = total.checked_add(term)?;
        }
        Some(total)
    }
}

impl From<i64> for Dim {
    fn from(n: i64) -> Dim {
        Dim::constant(n)
    }
}

impl fmt::Display for Dim {
    /// Highest-degree terms first: `B*T`, `T+1`, `2*T-1`, `4096`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return write!(f, "0");
        }
        let mut terms: Vec<(&Monomial, &i64)> = self.terms.iter().collect();
        terms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
        for (i, (m, c)) in terms.iter().enumerate() {
            let c = **c;
            let sign = if c < 0 {
                "-"
            } else if i > 0 {
                "+"
            } else {
                ""
            };
            let mag = c.abs();
            let body = match (m.is_empty(), mag) {
                (true, _) => mag.to_string(),
                (false, 1) => m.join("*"),
                (false, _) => format!("{mag}*{}", m.join("*")),
            };
            write!(f, "{sign}{body}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_compare_exactly() {
        let (b, t) = (Dim::symbol("B"), Dim::symbol("T"));
        assert_eq!(b.mul(&t), t.mul(&b));
        assert_eq!(b.mul(&t).to_string(), "B*T");
        assert_eq!(t.add(&Dim::constant(1)).to_string(), "T+1");
        assert_eq!(t.mul(&Dim::constant(2)).sub(&Dim::constant(1)).to_string(), "2*T-1");
        assert_eq!(t.sub(&t), Dim::constant(0));
        assert_eq!(Dim::constant(4096).as_constant(), Some(4096));
        assert_eq!(b.mul(&t).div_exact(&t), Some(b.clone()));
        assert_eq!(t.mul(&Dim::constant(6)).div_exact(&Dim::constant(3)), Some(t.mul(&Dim::constant(2))));
        assert_eq!(t.div_exact(&Dim::constant(2)), None);
        assert_eq!(b.div_exact(&t), None);
    }
}
