//! A program, a recipe and a run's settings → the run's `Fingerprint`: hashes of the
//! model's and the recipe's syntax trees (so comments and layout never count), the seed,
//! the training text's hash and the number of steps.

use modelc_compiler::{Program, Target};
use modelc_grammar::ast::{File, ItemKind};
use modelc_grammar::dump::dump;
use modelc_runtime::run_dir::{sha256, Fingerprint};

/// What the training text is, for the fingerprint: its name and its bytes' hash.
pub struct DataId {
    pub name: String,
    pub sha256: String,
}

impl DataId {
    pub fn of_tokens(name: &str, tokens: &[u32]) -> DataId {
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        DataId { name: name.to_string(), sha256: sha256(&bytes) }
    }
}

pub fn of(program: &Program, file: &str, target: &Target, seed: u64, steps: u64, data: DataId) -> Fingerprint {
    let recipe_name = target.recipe.clone().unwrap_or_default();
    // The model: every module's tree (the root file's recipes aside, which are the recipes').
    let mut model = String::new();
    let mut recipe = String::new();
    for (i, module) in program.modules.iter().enumerate() {
        let mut items = Vec::new();
        for item in &module.ast.items {
            match &item.kind {
                ItemKind::Recipe(r) if i == 0 => {
                    if r.name.name == recipe_name {
                        recipe = dump(&File { items: vec![item.clone()], span: module.ast.span }, None);
                    }
                }
                _ => items.push(item.clone()),
            }
        }
        model.push_str(&dump(&File { items, span: module.ast.span }, None));
    }
    for (k, v) in &target.sets {
        recipe.push_str(&format!("--set {k}={v}\n"));
    }
    if let Some(m) = &target.model {
        recipe.push_str(&format!("--model {m}\n"));
    }
    Fingerprint {
        file: file.to_string(),
        model: sha256(model.as_bytes()),
        recipe_name,
        recipe: sha256(recipe.as_bytes()),
        seed,
        data_name: data.name,
        data: data.sha256,
        steps,
    }
}
