//! Port of util/lr_decay.py: parameter groups for layer-wise lr decay (ELECTRA / BEiT).

use tch::Tensor;

use crate::torch::optim::ParamGroup;

/// `param_groups_lrd(model, weight_decay, no_weight_decay_list, layer_decay)`: one group per
/// (layer id, decay or not), named `layer_{id}_{decay|no_decay}`, in order of first appearance in
/// `named_parameters`; frozen parameters are left out; 1-D parameters and `no_weight_decay_list`
/// get no weight decay; `lr_scale = layer_decay^(num_layers - layer_id)`.
/// `num_blocks` is `len(model.blocks)`. Returns the groups and their names.
pub fn param_groups_lrd(
    named_parameters: Vec<(String, Tensor)>,
    num_blocks: usize,
    weight_decay: f64,
    no_weight_decay_list: &[&str],
    layer_decay: f64,
) -> (Vec<ParamGroup>, Vec<String>) {
    let num_layers = num_blocks + 1;
    let layer_scales: Vec<f64> = (0..=num_layers)
        .map(|i| layer_decay.powf((num_layers - i) as f64)) // C pow, as Python's **
        .collect();

    let mut names: Vec<String> = Vec::new();
    let mut groups: Vec<ParamGroup> = Vec::new();
    for (n, p) in named_parameters {
        if !p.requires_grad() {
            continue;
        }
        // no decay: all 1D parameters and model specific ones
        let (g_decay, this_decay) = if p.dim() == 1 || no_weight_decay_list.contains(&n.as_str()) {
            ("no_decay", 0.)
        } else {
            ("decay", weight_decay)
        };
        let layer_id = get_layer_id_for_vit(&n, num_layers);
        let group_name = format!("layer_{layer_id}_{g_decay}");
        let i = match names.iter().position(|g| *g == group_name) {
            Some(i) => i,
            None => {
                names.push(group_name);
                groups.push(ParamGroup {
                    names: Vec::new(),
                    params: Vec::new(),
                    lr: 0.,
                    weight_decay: this_decay,
                    lr_scale: Some(layer_scales[layer_id]),
                });
                groups.len() - 1
            }
        };
        groups[i].names.push(n);
        groups[i].params.push(p);
    }
    (groups, names)
}

/// Assign a parameter with its layer id, following BEiT:
/// <https://github.com/microsoft/unilm/blob/master/beit/optim_factory.py#L33>
pub fn get_layer_id_for_vit(name: &str, num_layers: usize) -> usize {
    if name == "cls_token" || name == "pos_embed" || name.starts_with("patch_embed") {
        0
    } else if let Some(rest) = name.strip_prefix("blocks.") {
        let i: usize = rest
            .split('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("parameter {name}: no block index"));
        i + 1
    } else {
        num_layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_ids() {
        assert_eq!(get_layer_id_for_vit("cls_token", 13), 0);
        assert_eq!(get_layer_id_for_vit("patch_embed.proj.weight", 13), 0);
        assert_eq!(get_layer_id_for_vit("blocks.11.mlp.fc2.bias", 13), 12);
        assert_eq!(get_layer_id_for_vit("fc_norm.weight", 13), 13);
        assert_eq!(get_layer_id_for_vit("head.weight", 13), 13);
    }
}
