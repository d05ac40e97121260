//! Port of util/lars.py: LARS optimizer, no rate scaling or weight decay for parameters <= 1D.

use anyhow::{ensure, Context, Result};
use tch::Tensor;

use crate::torch::optim::{Optimizer, ParamGroup};
use crate::torch::serialization::pickle::Value;

/// `LARS(params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001)`, one group.
#[derive(Debug)]
pub struct Lars {
    pub param_groups: Vec<ParamGroup>,
    pub momentum: f64,
    pub trust_coefficient: f64,
    mu: Vec<Vec<Option<Tensor>>>, // self.state[p]['mu'], [group][param]
}

impl Lars {
    pub fn new(params: Vec<(String, Tensor)>, lr: f64, weight_decay: f64) -> Self {
        let (names, params): (Vec<String>, Vec<Tensor>) = params.into_iter().unzip();
        let mu = vec![params.iter().map(|_| None).collect()];
        Lars {
            param_groups: vec![ParamGroup {
                names,
                params,
                lr,
                weight_decay,
                lr_scale: None,
            }],
            momentum: 0.9,
            trust_coefficient: 0.001,
            mu,
        }
    }
}

impl Optimizer for Lars {
    fn param_groups(&mut self) -> &mut [ParamGroup] {
        &mut self.param_groups
    }

    fn step(&mut self) {
        let (momentum, trust) = (self.momentum, self.trust_coefficient);
        tch::no_grad(|| {
            for (g, mus) in self.param_groups.iter_mut().zip(&mut self.mu) {
                for (p, mu) in g.params.iter_mut().zip(mus.iter_mut()) {
                    let mut dp = p.grad();
                    if !dp.defined() {
                        continue;
                    }
                    if p.dim() > 1 {
                        // if not normalization gamma/beta or bias
                        dp = &dp + &*p * g.weight_decay;
                        let param_norm = p.norm();
                        let update_norm = dp.norm();
                        let one = param_norm.ones_like();
                        // torch.where(param_norm > 0., torch.where(update_norm > 0,
                        //     trust_coefficient * param_norm / update_norm, one), one)
                        let q = (&param_norm * trust / &update_norm)
                            .where_self(&update_norm.gt(0.), &one)
                            .where_self(&param_norm.gt(0.), &one);
                        dp *= q;
                    }
                    let mu = mu.get_or_insert_with(|| p.zeros_like());
                    let _ = mu.g_mul_scalar_(momentum).g_add_(&dp);
                    let _ = p.g_add_(&(&*mu * -g.lr));
                }
            }
        });
    }

    /// `optimizer.state_dict()`: `{'state': {id: {'mu'}}, 'param_groups': [{lr, weight_decay,
    /// momentum, trust_coefficient, params}]}`.
    fn state_dict(&self) -> Value {
        let s = |k: &str| Value::Str(k.into());
        let (mut state, mut groups, mut id) = (Vec::new(), Vec::new(), 0i64);
        for (g, mus) in self.param_groups.iter().zip(&self.mu) {
            let mut ids = Vec::new();
            for mu in mus {
                if let Some(mu) = mu {
                    let entry = vec![(s("mu"), Value::Tensor(mu.shallow_clone()))];
                    state.push((Value::Int(id), Value::Dict(entry)));
                }
                ids.push(Value::Int(id));
                id += 1;
            }
            groups.push(Value::Dict(vec![
                (s("lr"), Value::Float(g.lr)),
                (s("weight_decay"), Value::Float(g.weight_decay)),
                (s("momentum"), Value::Float(self.momentum)),
                (s("trust_coefficient"), Value::Float(self.trust_coefficient)),
                (s("params"), Value::List(ids)),
            ]));
        }
        Value::Dict(vec![
            (s("state"), Value::Dict(state)),
            (s("param_groups"), Value::List(groups)),
        ])
    }

    fn load_state_dict(&mut self, sd: &Value) -> Result<()> {
        let groups = sd
            .get("param_groups")
            .and_then(Value::as_list)
            .context("optimizer state_dict has no 'param_groups' list")?;
        ensure!(
            groups.len() == self.param_groups.len(),
            "loaded state dict has {} parameter groups, LARS has {}",
            groups.len(),
            self.param_groups.len()
        );
        let mut next_id = 0i64;
        for (gi, saved) in groups.iter().enumerate() {
            let f = |k: &str| saved.get(k).and_then(Value::as_float);
            let group = &mut self.param_groups[gi];
            group.lr = f("lr").context("parameter group without 'lr'")?;
            group.weight_decay = f("weight_decay").unwrap_or(group.weight_decay);
            self.momentum = f("momentum").unwrap_or(self.momentum);
            self.trust_coefficient = f("trust_coefficient").unwrap_or(self.trust_coefficient);
            for pi in 0..group.params.len() {
                let mu = sd
                    .get("state")
                    .and_then(Value::as_dict)
                    .and_then(|st| st.iter().find(|(k, _)| k.as_int() == Some(next_id)))
                    .and_then(|(_, e)| e.get("mu"))
                    .and_then(Value::as_tensor);
                self.mu[gi][pi] = mu.map(|t| t.to_device(group.params[pi].device()).copy());
                next_id += 1;
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Lars {
    /// `print(optimizer)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "LARS (")?;
        for (i, g) in self.param_groups.iter().enumerate() {
            writeln!(f, "Parameter Group {i}")?;
            writeln!(f, "    lr: {}", g.lr)?;
            writeln!(f, "    momentum: {}", self.momentum)?;
            writeln!(f, "    trust_coefficient: {}", self.trust_coefficient)?;
            writeln!(f, "    weight_decay: {}", g.weight_decay)?;
        }
        write!(f, ")")
    }
}
