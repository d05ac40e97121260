//! Not in the reference: Python's formatting of numbers, so that what mae prints and writes
//! (`* Acc@1 …`, `base lr: 1.00e-03`, log.txt's JSON lines, ETAs) is what the official scripts
//! print and write: `repr(float)`, `"%.2e"`, `json.dumps` of a flat dict, `datetime.timedelta`.

/// `str(datetime.timedelta(seconds=int(s)))`.
pub fn timedelta(s: f64) -> String {
    let s = s.max(0.) as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let hms = format!("{h}:{m:02}:{s:02}");
    match d {
        0 => hms,
        1 => format!("1 day, {hms}"),
        d => format!("{d} days, {hms}"),
    }
}

/// Python's `repr(float)` (also what `json.dumps` and `"{}".format` write): shortest digits,
/// fixed notation for exponents in [-4, 16), else `1.5e-05` style.
pub fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0. { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if v == 0. || (-4..16).contains(&exp) {
        let s = format!("{v}");
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// Python's `"%.2e" % v` (the exponent has at least two digits: `1.00e-03`).
pub fn py_e2(v: f64) -> String {
    let s = format!("{v:.2e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// A number of a `log.txt` line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    Float(f64),
    Int(i64),
}

/// `json.dumps(log_stats)`: `{"train_lr": 0.0001, ..., "epoch": 3}` in the given order, the
/// floats as Python writes them.
pub fn json_dumps(log_stats: &[(String, Stat)]) -> String {
    let items: Vec<String> = log_stats
        .iter()
        .map(|(k, v)| match v {
            Stat::Float(f) => format!("\"{k}\": {}", py_float(*f)),
            Stat::Int(i) => format!("\"{k}\": {i}"),
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr_and_timedelta() {
        let cases = [
            (3.2552083333333326e-05, "3.2552083333333326e-05"),
            (0.0001, "0.0001"),
            (1.0, "1.0"),
            (2.256708025932312, "2.256708025932312"),
            (1e16, "1e+16"),
            (0.0, "0.0"),
            (f64::NAN, "nan"),
        ];
        for (v, want) in cases {
            assert_eq!(py_float(v), want);
        }
        assert_eq!(timedelta(3725.9), "1:02:05");
        assert_eq!(timedelta(90000.), "1 day, 1:00:00");
    }
}
