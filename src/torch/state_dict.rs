//! Not in the reference: PyTorch's `nn.Module.state_dict()` / `load_state_dict(sd, strict)` on a
//! tch VarStore, whose variable names are the official `state_dict` keys. `load_state_dict`
//! copies and reports what did not match (`_IncompatibleKeys`); `adopt_state_dict` hands a
//! whole checkpoint's tensors to a model built without random init (`init: false`).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use tch::{nn, Tensor};

use crate::torch::optim::named_parameters;
use crate::torch::serialization::pickle::Value;

/// `model_without_ddp.state_dict()`: every variable, in PyTorch's `named_parameters` order.
pub fn state_dict(vs: &nn::VarStore) -> Value {
    Value::Dict(
        named_parameters(vs)
            .into_iter()
            .map(|(k, t)| (Value::Str(k), Value::Tensor(t.detach())))
            .collect(),
    )
}

/// What `load_state_dict(strict=False)` returns (`_IncompatibleKeys`), plus the keys whose shape
/// differs (PyTorch raises on those even when not strict; here they are reported and skipped).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub missing_keys: Vec<String>,
    pub unexpected_keys: Vec<String>,
    /// (key, shape in the checkpoint, shape in the model)
    pub mismatched_keys: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing_keys.is_empty()
            && self.unexpected_keys.is_empty()
            && self.mismatched_keys.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "missing_keys={:?}, unexpected_keys={:?}",
            self.missing_keys, self.unexpected_keys
        )?;
        for (k, from, to) in &self.mismatched_keys {
            write!(f, ", size mismatch for {k}: copying a param with shape {from:?} from checkpoint, the shape in current model is {to:?}")?;
        }
        Ok(())
    }
}

/// `model.load_state_dict(sd, strict)` on a VarStore: copies tensor for tensor under no_grad
/// (casting dtype / moving device as needed) and reports what did not match. Strict: any
/// missing, unexpected or mismatched key is an error that lists them, and nothing is copied.
pub fn load_state_dict(
    vs: &mut nn::VarStore,
    sd: Vec<(String, Tensor)>,
    strict: bool,
) -> Result<LoadReport> {
    let (report, pairs) = match_state_dict(vs, sd, strict)?;
    tch::no_grad(|| pairs.into_iter().try_for_each(|(mut v, t)| v.f_copy_(&t)))?;
    Ok(report)
}

/// The (parameter, checkpoint tensor) pairs whose keys and shapes match, and what did not.
fn match_state_dict(
    vs: &nn::VarStore,
    sd: Vec<(String, Tensor)>,
    strict: bool,
) -> Result<(LoadReport, Vec<(Tensor, Tensor)>)> {
    let mut vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut report = LoadReport::default();
    let mut pairs = Vec::new();
    for (k, t) in sd {
        match vars.remove(&k) {
            None => report.unexpected_keys.push(k),
            Some(v) if v.size() != t.size() => report.mismatched_keys.push((k, t.size(), v.size())),
            Some(v) => pairs.push((v, t)),
        }
    }
    report.missing_keys = vars.into_keys().collect();
    if strict && !report.is_clean() {
        bail!("Error(s) in loading state_dict: {report}");
    }
    Ok((report, pairs))
}

/// [`load_state_dict`] strictly, for a model built to receive a whole checkpoint (`init:
/// false`): a checkpoint tensor of the parameter's dtype and device, contiguous and sharing
/// memory with no other entry, becomes the parameter's storage (`param.set_(t)`, as
/// `param.data = t`) instead of being copied; the rest is copied. The model then holds the
/// checkpoint's bytes once, and no second buffer is ever written.
pub fn adopt_state_dict(vs: &mut nn::VarStore, sd: Vec<(String, Tensor)>) -> Result<LoadReport> {
    let (report, pairs) = match_state_dict(vs, sd, true)?;
    let span = |t: &Tensor| {
        let start = t.data_ptr() as usize;
        (start, start + t.numel() * t.kind().elt_size_in_bytes())
    };
    // entries whose bytes overlap (views of one storage) stay distinct parameters: copied
    let mut spans: Vec<(usize, usize)> = pairs.iter().map(|(_, t)| span(t)).collect();
    spans.sort_unstable();
    let mut shared = std::collections::HashSet::new();
    let mut reach: Option<(usize, usize)> = None; // (end, start) of the span reaching furthest
    for &(start, end) in &spans {
        if let Some((far, owner)) = reach.filter(|&(far, _)| start < far) {
            shared.extend([start, owner]);
            if end <= far {
                continue;
            }
        }
        reach = Some((end, start));
    }
    tch::no_grad(|| {
        pairs.into_iter().try_for_each(|(mut v, t)| {
            let adopt = t.numel() > 0
                && t.kind() == v.kind()
                && t.device() == v.device()
                && t.is_contiguous()
                && !shared.contains(&span(&t).0);
            match adopt {
                true => v.f_set_source_tensor_(&t).map(drop),
                false => v.f_copy_(&t),
            }
        })
    })?;
    Ok(report)
}
