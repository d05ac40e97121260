//! Port of util/pos_embed.py: the fixed 2-D sine-cosine position embedding of MAE and the
//! bicubic interpolation of a checkpoint's `pos_embed` for another resolution.

use anyhow::{ensure, Context, Result};
use tch::{Kind, Tensor};

// --------------------------------------------------------
// 2D sine-cosine position embedding
// References:
// Transformer: https://github.com/tensorflow/models/blob/master/official/nlp/transformer/model_utils.py
// MoCo v3: https://github.com/facebookresearch/moco-v3
// --------------------------------------------------------

/// `get_2d_sincos_pos_embed`: [grid_size*grid_size (+1 zero row with cls_token), embed_dim],
/// computed in f64 as numpy does and returned as f32 (`torch.from_numpy(...).float()`).
pub fn get_2d_sincos_pos_embed(embed_dim: i64, grid_size: i64, cls_token: bool) -> Tensor {
    let emb = get_2d_sincos_pos_embed_f64(embed_dim, grid_size, cls_token);
    let rows = emb.len() as i64 / embed_dim;
    Tensor::from_slice(&emb)
        .reshape([rows, embed_dim])
        .to_kind(Kind::Float)
}

/// The f64 table of [`get_2d_sincos_pos_embed`], row-major.
pub fn get_2d_sincos_pos_embed_f64(embed_dim: i64, grid_size: i64, cls_token: bool) -> Vec<f64> {
    assert!(embed_dim % 2 == 0);
    // np.meshgrid(grid_w, grid_h): here w goes first, so grid[0] holds the column index
    let cells = (0..grid_size).flat_map(|i| (0..grid_size).map(move |j| (j as f64, i as f64)));
    let mut emb = Vec::with_capacity(((grid_size * grid_size + 1) * embed_dim) as usize);
    if cls_token {
        emb.resize(embed_dim as usize, 0.);
    }
    for (g0, g1) in cells {
        // use half of dimensions to encode grid_h
        emb.extend(get_1d_sincos_pos_embed(embed_dim / 2, g0)); // (H*W, D/2)
        emb.extend(get_1d_sincos_pos_embed(embed_dim / 2, g1)); // (H*W, D/2)
    }
    emb
}

/// One row of `get_1d_sincos_pos_embed_from_grid`: [sin(pos·ω), cos(pos·ω)], ω_d = 1/10000^(d/(D/2)).
fn get_1d_sincos_pos_embed(embed_dim: i64, pos: f64) -> impl Iterator<Item = f64> {
    assert!(embed_dim % 2 == 0);
    let half = embed_dim / 2;
    let out = move |d: i64| pos * (1. / 10000f64.powf(d as f64 / (embed_dim as f64 / 2.))); // (D/2,)
    (0..half)
        .map(move |d| out(d).sin())
        .chain((0..half).map(move |d| out(d).cos()))
}

// --------------------------------------------------------
// Interpolate position embeddings for high-resolution
// References:
// DeiT: https://github.com/facebookresearch/deit
// --------------------------------------------------------

/// `interpolate_pos_embed(model, checkpoint_model)` on one entry of a state dict: resizes
/// `checkpoint_model[key]` ([1, extra + orig², D]) to the model's `num_patches` by bicubic
/// interpolation (align_corners=False) of the patch grid; class (and dist) tokens are kept.
/// `num_extra_tokens` is the model's `pos_embed.shape[-2] - num_patches`. A missing key or a
/// matching size leaves the state dict as it is.
pub fn interpolate_pos_embed(
    checkpoint_model: &mut [(String, Tensor)],
    key: &str,
    num_patches: i64,
    num_extra_tokens: i64,
) -> Result<()> {
    let Some((_, pos_embed_checkpoint)) = checkpoint_model.iter_mut().find(|(k, _)| k == key)
    else {
        return Ok(());
    };
    let size = pos_embed_checkpoint.size();
    ensure!(
        size.len() == 3 && size[0] == 1,
        "checkpoint {key} has shape {size:?}, expected [1, tokens, dim]"
    );
    let embedding_size = size[2];
    // height (== width) for the checkpoint position embedding
    let orig_size = ((size[1] - num_extra_tokens) as f64).sqrt() as i64;
    // height (== width) for the new position embedding
    let new_size = (num_patches as f64).sqrt() as i64;
    if orig_size == new_size {
        return Ok(());
    }
    ensure!(
        orig_size * orig_size + num_extra_tokens == size[1],
        "checkpoint {key} has {} tokens: not {num_extra_tokens} extra tokens plus a square grid",
        size[1]
    );
    println!("Position interpolate from {orig_size}x{orig_size} to {new_size}x{new_size}");
    let extra_tokens = pos_embed_checkpoint.narrow(1, 0, num_extra_tokens);
    // only the position tokens are interpolated
    let pos_tokens = pos_embed_checkpoint
        .narrow(1, num_extra_tokens, orig_size * orig_size)
        .reshape([-1, orig_size, orig_size, embedding_size])
        .permute([0, 3, 1, 2]); // [1, D, orig, orig]
    let pos_tokens = pos_tokens
        .f_upsample_bicubic2d([new_size, new_size], false, None, None)
        .with_context(|| format!("interpolating {key}"))?
        .permute([0, 2, 3, 1])
        .flatten(1, 2); // [1, new*new, D]
    *pos_embed_checkpoint = Tensor::cat(&[extra_tokens, pos_tokens], 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_numpy_reference() {
        // row 1 + (i*G + j): first half encodes the column j, second half the row i
        let (d, g) = (8, 3);
        let t = get_2d_sincos_pos_embed_f64(d, g, true);
        assert!(t[..8].iter().all(|&v| v == 0.));
        let (i, j) = (1, 2);
        let row = &t[(1 + i * g as usize + j) * 8..][..8];
        let om: [f64; 2] = [1., 0.01];
        let want = [
            (2. * om[0]).sin(),
            (2. * om[1]).sin(),
            (2. * om[0]).cos(),
            (2. * om[1]).cos(),
            om[0].sin(),
            om[1].sin(),
            om[0].cos(),
            om[1].cos(),
        ];
        for (a, b) in row.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{row:?} vs {want:?}");
        }
    }

    #[test]
    fn interpolation_keeps_extra_tokens_and_is_identity_at_same_size() {
        let pe = Tensor::randn([1, 1 + 16, 6], tch::kind::FLOAT_CPU);
        let mut sd = vec![("pos_embed".to_string(), pe.copy())];
        interpolate_pos_embed(&mut sd, "pos_embed", 16, 1).unwrap();
        assert!(sd[0].1.equal(&pe));
        interpolate_pos_embed(&mut sd, "pos_embed", 36, 1).unwrap();
        assert_eq!(sd[0].1.size(), [1, 37, 6]);
        assert!(sd[0].1.narrow(1, 0, 1).equal(&pe.narrow(1, 0, 1)));
    }
}
