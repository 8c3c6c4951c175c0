//! Globs over hierarchical parameter names (`*.attn.wq`, `pooler.*`): recipe targets,
//! `trainable` lists and `unused` checkpoint tensors all match names this way.

/// `*` matches any run of characters (dots included), everything else itself.
pub fn matches(glob: &str, name: &str) -> bool {
    match glob.split_once('*') {
        None => glob == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else { return false };
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| matches(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("pooler.*", "pooler.dense.weight"));
        assert!(matches("*.bias", "a.b.bias"));
        assert!(matches("a.*.c", "a.x.y.c"));
        assert!(!matches("pooler.*", "encoder.pooler.x"));
        assert!(!matches("a.*.c", "a.x.d"));
        assert!(matches("exact", "exact"));
    }
}
