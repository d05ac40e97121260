//! util/pos_embed.rs vs the numpy reference `get_2d_sincos_pos_embed`
//! (tools/fixtures/make_parity_fixtures.py).

use crate::common::{load_io, parity_fixtures};
use mae::util::pos_embed::{get_2d_sincos_pos_embed, get_2d_sincos_pos_embed_f64};
use tch::{Kind, Tensor};

#[test]
fn sincos_tables_match_numpy() {
    let io = load_io(&parity_fixtures("tiny"), "pos_embed");
    let mut n = 0;
    for (key, want) in &io {
        let parts: Vec<&str> = key.split('_').collect();
        let [prec, dim, grid, cls] = parts[..] else {
            panic!("{key}")
        };
        let (dim, grid, cls): (i64, i64, bool) =
            (dim.parse().unwrap(), grid.parse().unwrap(), cls == "1");
        if prec == "f32" {
            // what the models hold: bit-identical to torch.from_numpy(pos_embed).float()
            let got = get_2d_sincos_pos_embed(dim, grid, cls);
            assert_eq!(got.kind(), Kind::Float);
            assert!(
                got.equal(want),
                "{key}: max diff {}",
                (&got - want).abs().max().double_value(&[])
            );
        } else {
            let got = Tensor::from_slice(&get_2d_sincos_pos_embed_f64(dim, grid, cls))
                .reshape(want.size());
            let diff = (&got - want).abs().max().double_value(&[]);
            assert!(diff <= 1e-14, "{key}: f64 max diff {diff:e}");
        }
        n += 1;
    }
    assert_eq!(n, 18);
}
