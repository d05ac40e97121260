//! The subset of Python's pickle that `torch.save` writes, read and written without executing
//! anything (the Rust side of `torch.load(weights_only=True)`, `torch/_weights_only_unpickler.py`).
//!
//! Reading interprets an allow-list of globals (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, `_codecs.encode`, …); any other global
//! that is only *referenced* becomes an opaque [`Value::Object`] (class name + args + state) that
//! can be printed but is never called; globals that could run code (`os.system`, `builtins.eval`,
//! `subprocess.*`, …) are refused. Every length is bounded by the bytes that remain, containers
//! live in an arena (no recursive drop), and the final tree has a depth and size budget.
//!
//! Hand-written because no crate serves: serde-pickle neither calls `persistent_load` (how every
//! storage is named) nor keeps unknown globals as inert objects, and writing must produce the
//! exact opcodes `torch.load(weights_only=True)` accepts.

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use tch::{Kind, Tensor};

/// A Python value from a checkpoint.
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// `dict` and `collections.OrderedDict`, insertion order kept.
    Dict(Vec<(Value, Value)>),
    Tensor(Tensor),
    /// An instance of a class that is not interpreted (`argparse.Namespace`, numpy scalars, ints
    /// beyond i64, sets), or a bare reference to a global (`torch.float32`: no args, no state).
    Object {
        class: String,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
}

impl Clone for Value {
    /// Tensors are shared (`shallow_clone`), like Python references.
    fn clone(&self) -> Self {
        match self {
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Float(f) => Value::Float(*f),
            Value::Str(s) => Value::Str(s.clone()),
            Value::Bytes(b) => Value::Bytes(b.clone()),
            Value::List(v) => Value::List(v.clone()),
            Value::Tuple(v) => Value::Tuple(v.clone()),
            Value::Dict(v) => Value::Dict(v.clone()),
            Value::Tensor(t) => Value::Tensor(t.shallow_clone()),
            Value::Object { class, args, state } => Value::Object {
                class: class.clone(),
                args: args.clone(),
                state: state.clone(),
            },
        }
    }
}

impl Value {
    /// `self[key]` for a dict with string keys (or the attribute of an `argparse.Namespace`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            Value::Object {
                state: Some(state), ..
            } => state.get(key),
            _ => None,
        }
    }
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    /// Floats, and ints as floats (Python's `float(x)`).
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(items) => Some(items),
            _ => None,
        }
    }
    /// Lists and tuples.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }
    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }
    /// Python's type name, for error messages.
    pub fn type_name(&self) -> &str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "Tensor",
            Value::Object { class, .. } => class,
        }
    }

    /// A multi-line outline for `mae inspect`: containers nested by indentation, at most
    /// `max_items` entries per container, tensors as `Tensor[f32; 768, 3, 16, 16]`.
    pub fn summary(&self, max_items: usize) -> String {
        let mut out = String::new();
        self.outline(&mut out, 0, max_items);
        out
    }

    fn outline(&self, out: &mut String, indent: usize, max_items: usize) {
        let pad = "  ".repeat(indent);
        let (open, close, items): (&str, &str, Vec<(Option<&Value>, &Value)>) = match self {
            Value::Dict(kv) if !kv.is_empty() => {
                ("{", "}", kv.iter().map(|(k, v)| (Some(k), v)).collect())
            }
            Value::List(v) if v.iter().any(is_container) => {
                ("[", "]", v.iter().map(|x| (None, x)).collect())
            }
            Value::Tuple(v) if v.iter().any(is_container) => {
                ("(", ")", v.iter().map(|x| (None, x)).collect())
            }
            other => {
                out.push_str(&short(&other.to_string(), 200));
                return;
            }
        };
        out.push_str(open);
        out.push('\n');
        for (k, v) in items.iter().take(max_items) {
            out.push_str(&pad);
            out.push_str("  ");
            if let Some(k) = k {
                out.push_str(&k.to_string());
                out.push_str(": ");
            }
            v.outline(out, indent + 1, max_items);
            out.push('\n');
        }
        if items.len() > max_items {
            out.push_str(&format!("{pad}  ... ({} more)\n", items.len() - max_items));
        }
        out.push_str(&pad);
        out.push_str(close);
    }
}

fn is_container(v: &Value) -> bool {
    matches!(v, Value::Dict(d) if !d.is_empty())
        || matches!(v, Value::List(l) | Value::Tuple(l) if !l.is_empty())
}

fn short(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// `f32`, `bf16`, … as in `Tensor[f32; 768, 3, 16, 16]`.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        Kind::Double => "f64",
        Kind::Int64 => "i64",
        Kind::Int => "i32",
        Kind::Int16 => "i16",
        Kind::Int8 => "i8",
        Kind::Uint8 => "u8",
        Kind::Bool => "bool",
        _ => "?",
    }
}

fn join<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(", ")
}

/// Python-like one-line repr; tensors as `Tensor[f32; 768, 3, 16, 16]`, objects as
/// `argparse.Namespace(batch_size=64, ...)`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => write!(f, "None"),
            Value::Bool(b) => write!(f, "{}", if *b { "True" } else { "False" }),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "'{}'", s.escape_debug()),
            Value::Bytes(b) if b.len() > 32 => write!(f, "b<{} bytes>", b.len()),
            Value::Bytes(b) => write!(f, "b'{}'", b.escape_ascii()),
            Value::List(v) => write!(f, "[{}]", join(v, |x| x.to_string())),
            Value::Tuple(v) if v.len() == 1 => write!(f, "({},)", v[0]),
            Value::Tuple(v) => write!(f, "({})", join(v, |x| x.to_string())),
            Value::Dict(v) => write!(f, "{{{}}}", join(v, |(k, x)| format!("{k}: {x}"))),
            Value::Tensor(t) if t.dim() == 0 => write!(f, "Tensor[{}]", kind_name(t.kind())),
            Value::Tensor(t) => {
                write!(
                    f,
                    "Tensor[{}; {}]",
                    kind_name(t.kind()),
                    join(&t.size(), |d| d.to_string())
                )
            }
            Value::Object { class, args, state } => {
                let mut parts: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                match state.as_deref() {
                    Some(Value::Dict(kv)) if kv.iter().all(|(k, _)| k.as_str().is_some()) => parts
                        .extend(
                            kv.iter()
                                .map(|(k, v)| format!("{}={v}", k.as_str().unwrap_or(""))),
                        ),
                    Some(s) => parts.push(format!("state={s}")),
                    None => {}
                }
                write!(f, "{class}({})", parts.join(", "))
            }
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// ------------------------------------------------------------------------------------------
// Reading
// ------------------------------------------------------------------------------------------

/// A stack/memo slot: scalars inline, everything else an index into the arena.
#[derive(Clone, Copy)]
enum Ref {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Node(usize),
}

enum Node {
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Ref>),
    Tuple(Vec<Ref>),
    Dict(Vec<(Ref, Ref)>),
    Set(Vec<Ref>),
    Global(String, String),
    Object {
        class: String,
        args: Vec<Ref>,
        state: Option<Ref>,
    },
    /// Results computed on the way: tensors, storages from `persistent_load`, big ints.
    Value(Value),
}

/// Globals whose mere presence refuses the file: calling them could run code.
fn check_global(module: &str, name: &str) -> Result<()> {
    const MODULES: &[&str] = &[
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "shutil",
        "socket",
        "importlib",
        "runpy",
        "code",
        "codeop",
        "pty",
        "ctypes",
        "multiprocessing",
        "pickle",
        "_pickle",
        "marshal",
        "webbrowser",
        "pdb",
        "bdb",
        "timeit",
        "signal",
        "_posixsubprocess",
        "asyncio",
        "io",
        "_io",
        "pathlib",
        "tempfile",
        "platform",
        "pip",
        "setuptools",
        "commands",
        "popen2",
    ];
    const SAFE_BUILTINS: &[&str] = &[
        "set",
        "frozenset",
        "bytearray",
        "bytes",
        "complex",
        "slice",
        "range",
        "int",
        "float",
        "str",
        "bool",
        "list",
        "tuple",
        "dict",
    ];
    let root = module.split('.').next().unwrap_or(module);
    let denied = MODULES.contains(&root)
        || (matches!(module, "builtins" | "__builtin__") && !SAFE_BUILTINS.contains(&name))
        || (module == "operator" && matches!(name, "attrgetter" | "methodcaller"))
        || (module == "functools" && name == "partial")
        || (root == "torch" && (name == "load" || module.starts_with("torch.hub")));
    if denied {
        bail!("refusing to load: the pickle references {module}.{name}, which could execute code");
    }
    Ok(())
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Ref>,
    marks: Vec<usize>,
    memo: HashMap<u32, Ref>,
    arena: Vec<Node>,
    persistent_load: &'a mut dyn FnMut(Value) -> Result<Value>,
    nested_calls: usize,
}

const MAX_DEPTH: usize = 256;

/// Interprets a pickle; `persistent_load` resolves persistent ids (torch's storages).
pub fn unpickle(
    data: &[u8],
    persistent_load: &mut dyn FnMut(Value) -> Result<Value>,
) -> Result<Value> {
    Ok(unpickle_prefix(data, persistent_load)?.0)
}

/// [`unpickle`] of the pickle `data` starts with, and the number of bytes it takes (the legacy
/// `torch.save` format writes several pickles one after the other).
pub fn unpickle_prefix(
    data: &[u8],
    persistent_load: &mut dyn FnMut(Value) -> Result<Value>,
) -> Result<(Value, usize)> {
    let mut u = Unpickler {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena: Vec::new(),
        persistent_load,
        nested_calls: 0,
    };
    let root = u.run()?;
    let mut budget = 1_000_000 + 4 * data.len();
    Ok((u.to_value(root, 0, &mut budget)?, u.pos))
}

impl Unpickler<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                anyhow!(
                    "truncated pickle: needs {n} bytes at offset {}, {} left",
                    self.pos,
                    self.data.len() - self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
    }
    /// A length prefix of `N` bytes, bounded by what remains.
    fn len<const N: usize>(&mut self) -> Result<usize> {
        let mut b = [0u8; 8];
        b[..N].copy_from_slice(self.take(N)?);
        let n = u64::from_le_bytes(b);
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            bail!(
                "length {n} at offset {} exceeds the {left} bytes left",
                self.pos - N
            );
        }
        Ok(n as usize)
    }
    fn line(&mut self) -> Result<&str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| anyhow!("unterminated line at offset {}", self.pos))?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n])
            .map_err(|_| anyhow!("non-UTF-8 text at offset {}", self.pos - n - 1))
    }
    fn utf8(&mut self, n: usize) -> Result<Ref> {
        let at = self.pos;
        let s = std::str::from_utf8(self.take(n)?)
            .map_err(|_| anyhow!("invalid UTF-8 string at offset {at}"))?;
        let s = s.to_string();
        Ok(self.node(Node::Str(s)))
    }
    fn node(&mut self, n: Node) -> Ref {
        self.arena.push(n);
        Ref::Node(self.arena.len() - 1)
    }
    fn pop(&mut self) -> Result<Ref> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("stack underflow");
        }
        self.stack.pop().ok_or_else(|| anyhow!("stack underflow"))
    }
    fn top(&self) -> Result<Ref> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("stack underflow");
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| anyhow!("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Ref>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| anyhow!("no MARK on the stack"))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }
    fn node_of(&self, r: Ref) -> Option<&Node> {
        match r {
            Ref::Node(i) => self.arena.get(i),
            _ => None,
        }
    }
    fn str_of(&self, r: Ref) -> Option<&str> {
        match self.node_of(r) {
            Some(Node::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn int_of(&self, r: Ref, what: &str) -> Result<i64> {
        match r {
            Ref::Int(i) => Ok(i),
            Ref::Bool(b) => Ok(b as i64),
            _ => bail!("{what}: expected an int"),
        }
    }
    fn ints_of(&self, r: Ref, what: &str) -> Result<Vec<i64>> {
        match self.node_of(r) {
            Some(Node::Tuple(v) | Node::List(v)) => {
                v.iter().map(|&x| self.int_of(x, what)).collect()
            }
            _ => bail!("{what}: expected a tuple of ints"),
        }
    }
    fn items_of(&self, r: Ref) -> Option<&[Ref]> {
        match self.node_of(r) {
            Some(Node::Tuple(v) | Node::List(v)) => Some(v),
            _ => None,
        }
    }
    fn memo_get(&self, i: u32) -> Result<Ref> {
        self.memo
            .get(&i)
            .copied()
            .ok_or_else(|| anyhow!("memo key {i} is not defined"))
    }
    fn memo_put(&mut self, i: u32) -> Result<()> {
        let top = self.top()?;
        self.memo.insert(i, top);
        Ok(())
    }

    fn run(&mut self) -> Result<Ref> {
        loop {
            let at = self.pos;
            let op = self.u8().context("pickle ends without STOP")?;
            self.step(op).with_context(|| {
                format!("pickle opcode {:?} (0x{op:02x}) at offset {at}", op as char)
            })?;
            if op == b'.' {
                return self.pop();
            }
        }
    }

    fn step(&mut self, op: u8) -> Result<()> {
        let r = match op {
            b'.' => return Ok(()), // STOP
            0x80 => {
                let p = self.u8()?;
                if p > 5 {
                    bail!("unsupported pickle protocol {p}");
                }
                return Ok(());
            }
            0x95 => {
                self.le::<8>()?; // FRAME: only a hint for buffering
                return Ok(());
            }
            b'(' => {
                self.marks.push(self.stack.len());
                return Ok(());
            }
            b'0' => {
                self.pop()?;
                return Ok(());
            }
            b'1' => {
                self.pop_mark()?;
                return Ok(());
            }
            b'2' => self.top()?,
            // Scalars.
            b'N' => Ref::None,
            0x88 => Ref::Bool(true),
            0x89 => Ref::Bool(false),
            b'K' => Ref::Int(self.u8()? as i64),
            b'M' => Ref::Int(u16::from_le_bytes(self.le()?) as i64),
            b'J' => Ref::Int(i32::from_le_bytes(self.le()?) as i64),
            0x8a => {
                let n = self.len::<1>()?;
                self.long(n)?
            }
            0x8b => {
                let n = self.len::<4>()?;
                self.long(n)?
            }
            b'G' => Ref::Float(f64::from_be_bytes(self.le()?)),
            b'I' => match self.line()? {
                "01" => Ref::Bool(true),
                "00" => Ref::Bool(false),
                s => Ref::Int(s.parse().map_err(|_| anyhow!("bad INT {s:?}"))?),
            },
            b'L' => {
                let s = self.line()?;
                let s = s.strip_suffix('L').unwrap_or(s);
                Ref::Int(s.parse().map_err(|_| anyhow!("LONG {s:?} is not an i64"))?)
            }
            b'F' => {
                let s = self.line()?;
                Ref::Float(s.parse().map_err(|_| anyhow!("bad FLOAT {s:?}"))?)
            }
            // Strings and bytes.
            b'X' => {
                let n = self.len::<4>()?;
                self.utf8(n)?
            }
            0x8c => {
                let n = self.len::<1>()?;
                self.utf8(n)?
            }
            0x8d => {
                let n = self.len::<8>()?;
                self.utf8(n)?
            }
            b'T' | b'U' => {
                // py2 `str`: torch.load decodes it (encoding='utf-8'); bytes when that fails.
                let n = if op == b'T' {
                    self.len::<4>()?
                } else {
                    self.len::<1>()?
                };
                let b = self.take(n)?.to_vec();
                match String::from_utf8(b) {
                    Ok(s) => self.node(Node::Str(s)),
                    Err(e) => self.node(Node::Bytes(e.into_bytes())),
                }
            }
            b'B' | b'C' | 0x8e | 0x96 => {
                let n = match op {
                    b'B' => self.len::<4>()?,
                    b'C' => self.len::<1>()?,
                    _ => self.len::<8>()?,
                };
                let b = self.take(n)?.to_vec();
                self.node(Node::Bytes(b))
            }
            0x98 => return Ok(()), // READONLY_BUFFER
            0x97 => bail!("out-of-band buffers (NEXT_BUFFER) are not supported"),
            b'P' => {
                let s = self.line()?.to_string();
                let pid = Value::Str(s);
                let v = (self.persistent_load)(pid)?;
                self.node(Node::Value(v))
            }
            b'Q' => {
                let pid = self.pop()?;
                let mut budget = 10_000;
                let pid = self.to_value(pid, 0, &mut budget)?;
                let v = (self.persistent_load)(pid)?;
                self.node(Node::Value(v))
            }
            // Containers.
            b')' => self.node(Node::Tuple(vec![])),
            b']' => self.node(Node::List(vec![])),
            b'}' => self.node(Node::Dict(vec![])),
            0x8f => self.node(Node::Set(vec![])),
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let floor = self.marks.last().copied().unwrap_or(0);
                if self.stack.len() < floor + n {
                    bail!("stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.node(Node::Tuple(items))
            }
            b't' => {
                let items = self.pop_mark()?;
                self.node(Node::Tuple(items))
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.node(Node::List(items))
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.node(Node::Set(items))
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.node(Node::Dict(pairs))
            }
            b'a' => {
                let x = self.pop()?;
                return self.extend(vec![x]);
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                return self.extend(items);
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                return self.set_items(vec![(k, v)]);
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                return self.set_items(pairs);
            }
            // Memo.
            b'q' => {
                let i = self.u8()? as u32;
                return self.memo_put(i);
            }
            b'r' => {
                let i = u32::from_le_bytes(self.le()?);
                return self.memo_put(i);
            }
            b'p' => {
                let s = self.line()?;
                let i = s.parse().map_err(|_| anyhow!("bad PUT index {s:?}"))?;
                return self.memo_put(i);
            }
            0x94 => return self.memo_put(self.memo.len() as u32),
            b'h' => {
                let i = self.u8()? as u32;
                self.memo_get(i)?
            }
            b'j' => {
                let i = u32::from_le_bytes(self.le()?);
                self.memo_get(i)?
            }
            b'g' => {
                let s = self.line()?;
                let i = s.parse().map_err(|_| anyhow!("bad GET index {s:?}"))?;
                self.memo_get(i)?
            }
            // Globals and calls.
            b'c' => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                self.global(module, name)?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (self.str_of(module), self.str_of(name)) {
                    (Some(m), Some(n)) => {
                        let (m, n) = (m.to_string(), n.to_string());
                        self.global(m, n)?
                    }
                    _ => bail!("STACK_GLOBAL needs two strings"),
                }
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let func = self.pop()?;
                let args = self
                    .items_of(args)
                    .ok_or_else(|| anyhow!("call arguments are not a tuple"))?
                    .to_vec();
                self.call(func, args)?
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let func = self.pop()?;
                let args = self
                    .items_of(args)
                    .ok_or_else(|| anyhow!("call arguments are not a tuple"))?
                    .to_vec();
                self.call(func, args)?
            }
            b'i' => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                let func = self.global(module, name)?;
                let args = self.pop_mark()?;
                self.call(func, args)?
            }
            b'o' => {
                let mut args = self.pop_mark()?;
                if args.is_empty() {
                    bail!("OBJ without a class");
                }
                let func = args.remove(0);
                self.call(func, args)?
            }
            b'b' => {
                let state = self.pop()?;
                return self.build(state);
            }
            0x82..=0x84 => bail!("the copyreg extension registry (EXT opcodes) is not supported"),
            b'S' | b'V' => bail!("text-mode string opcodes (protocol 0) are not supported"),
            _ => bail!("unknown opcode"),
        };
        self.stack.push(r);
        Ok(())
    }

    /// LONG1/LONG4: little-endian two's complement.
    fn long(&mut self, n: usize) -> Result<Ref> {
        let b = self.take(n)?.to_vec();
        let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
        let fill = if neg { 0xff } else { 0 };
        if b.len() > 8 && b[8..].iter().any(|&x| x != fill)
            || (b.len() > 8 && (b[7] & 0x80 != 0) != neg)
        {
            return Ok(self.node(Node::Value(Value::Object {
                class: "builtins.int".into(),
                args: vec![Value::Bytes(b)],
                state: None,
            })));
        }
        let mut w = [fill; 8];
        let k = b.len().min(8);
        w[..k].copy_from_slice(&b[..k]);
        Ok(Ref::Int(i64::from_le_bytes(w)))
    }

    fn global(&mut self, module: String, name: String) -> Result<Ref> {
        check_global(&module, &name)?;
        Ok(self.node(Node::Global(module, name)))
    }

    fn extend(&mut self, items: Vec<Ref>) -> Result<()> {
        let Ref::Node(i) = self.top()? else {
            bail!("APPEND(S) on a scalar")
        };
        if matches!(self.arena[i], Node::Object { .. }) {
            // A list subclass: keep its items visible as the state.
            let list = self.node(Node::List(items));
            if let Node::Object { state, .. } = &mut self.arena[i] {
                *state = Some(list);
            }
            return Ok(());
        }
        match &mut self.arena[i] {
            Node::List(v) | Node::Set(v) => v.extend(items),
            _ => bail!("APPEND(S) on something that is not a list"),
        }
        Ok(())
    }

    fn set_items(&mut self, pairs: Vec<(Ref, Ref)>) -> Result<()> {
        let Ref::Node(i) = self.top()? else {
            bail!("SETITEM(S) on a scalar")
        };
        if matches!(self.arena[i], Node::Object { .. }) {
            // A dict subclass (e.g. defaultdict): keep its items visible as the state.
            let d = self.node(Node::Dict(pairs));
            if let Node::Object { state, .. } = &mut self.arena[i] {
                *state = Some(d);
            }
            return Ok(());
        }
        match &mut self.arena[i] {
            // Duplicate keys are resolved (last wins) in `to_value`.
            Node::Dict(v) => v.extend(pairs),
            _ => bail!("SETITEM(S) on something that is not a dict"),
        }
        Ok(())
    }

    /// Identity of a hashable key, for `d[k] = v` replacing an equal key.
    fn key_of(&self, r: Ref) -> Option<String> {
        match r {
            Ref::Int(i) => Some(format!("i{i}")),
            Ref::Bool(b) => Some(format!("i{}", b as i64)),
            Ref::None => Some("n".into()),
            Ref::Node(_) => self.str_of(r).map(|s| format!("s{s}")),
            Ref::Float(_) => None,
        }
    }

    fn build(&mut self, state: Ref) -> Result<()> {
        match self.top()? {
            Ref::Node(i) => match &mut self.arena[i] {
                Node::Object { state: s, .. } => *s = Some(state),
                // OrderedDict's `_metadata` attribute, tensor/parameter attributes: not kept.
                Node::Dict(_) | Node::Value(_) | Node::Set(_) | Node::List(_) => {}
                _ => bail!("BUILD on something that is not an object"),
            },
            _ => bail!("BUILD on a scalar"),
        }
        Ok(())
    }

    /// REDUCE / NEWOBJ / INST / OBJ: interprets the allow-listed callables, records the others.
    fn call(&mut self, func: Ref, args: Vec<Ref>) -> Result<Ref> {
        let (module, name) = match self.node_of(func) {
            Some(Node::Global(m, n)) => (m.clone(), n.clone()),
            _ => bail!("call of something that is not a global"),
        };
        let r = match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                let mut items = vec![];
                if let Some(&a) = args.first() {
                    for &p in self.items_of(a).ok_or_else(|| {
                        anyhow!("{module}.{name}: argument is not a list of pairs")
                    })? {
                        match self.items_of(p) {
                            Some(&[k, v]) => items.push((k, v)),
                            _ => bail!("{module}.{name}: argument is not a list of pairs"),
                        }
                    }
                }
                self.node(Node::Dict(items))
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let t = self
                    .rebuild_tensor(&args)
                    .with_context(|| format!("{module}.{name}"))?;
                self.node(Node::Value(Value::Tensor(t)))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                match args.first() {
                    Some(&t @ Ref::Node(i))
                        if matches!(self.arena[i], Node::Value(Value::Tensor(_))) =>
                    {
                        t
                    }
                    _ => bail!("{module}.{name}: first argument is not a tensor"),
                }
            }
            ("torch._tensor", "_rebuild_from_type_v2") => match args.as_slice() {
                [f, _type, a, ..] => {
                    let a = self
                        .items_of(*a)
                        .ok_or_else(|| anyhow!("{name}: arguments are not a tuple"))?
                        .to_vec();
                    // Nested rebuilds are a chain of tuples as long as the pickle: bound it.
                    self.nested_calls += 1;
                    ensure!(self.nested_calls <= 8, "{module}.{name}: nested too deeply");
                    let r = self.call(*f, a)?;
                    self.nested_calls -= 1;
                    r
                }
                _ => bail!("{module}.{name}: expected 4 arguments"),
            },
            ("torch", "Size") | ("builtins" | "__builtin__", "tuple") => {
                let items = match args.first() {
                    Some(&a) => self
                        .items_of(a)
                        .ok_or_else(|| anyhow!("{name}: argument is not a sequence"))?
                        .to_vec(),
                    None => vec![],
                };
                self.node(Node::Tuple(items))
            }
            ("builtins" | "__builtin__", "list") => {
                let items = match args.first() {
                    Some(&a) => self
                        .items_of(a)
                        .ok_or_else(|| anyhow!("{name}: argument is not a sequence"))?
                        .to_vec(),
                    None => vec![],
                };
                self.node(Node::List(items))
            }
            ("builtins" | "__builtin__", "set" | "frozenset") => {
                let items = match args.first() {
                    Some(&a) => match self.node_of(a) {
                        Some(Node::Tuple(v) | Node::List(v) | Node::Set(v)) => v.clone(),
                        _ => bail!("{name}: argument is not a sequence"),
                    },
                    None => vec![],
                };
                self.node(Node::Set(items))
            }
            ("_codecs", "encode") | ("builtins" | "__builtin__", "bytearray" | "bytes") => {
                let bytes = match args.as_slice() {
                    [] => vec![],
                    [s, rest @ ..] => {
                        match (self.node_of(*s), rest.first().and_then(|&e| self.str_of(e))) {
                            (Some(Node::Bytes(b)), _) => b.clone(),
                            (Some(Node::Str(s)), Some("latin1" | "latin-1" | "iso-8859-1")) => s
                                .chars()
                                .map(|c| {
                                    u8::try_from(c as u32)
                                        .map_err(|_| anyhow!("{name}: non-latin1 character"))
                                })
                                .collect::<Result<_>>()?,
                            (Some(Node::Str(s)), None | Some("utf-8" | "utf8")) => {
                                s.as_bytes().to_vec()
                            }
                            (Some(Node::List(v)), _) => v
                                .iter()
                                .map(|&x| {
                                    u8::try_from(self.int_of(x, name.as_str())?)
                                        .map_err(|_| anyhow!("{name}: byte out of range"))
                                })
                                .collect::<Result<_>>()?,
                            _ => bail!("{module}.{name}: unsupported arguments"),
                        }
                    }
                };
                self.node(Node::Bytes(bytes))
            }
            ("copyreg" | "copy_reg", "_reconstructor") => match args.as_slice() {
                [cls, _base, state] => match self.node_of(*cls) {
                    Some(Node::Global(m, n)) => {
                        let class = format!("{m}.{n}");
                        let state = (!matches!(state, Ref::None)).then_some(*state);
                        self.node(Node::Object {
                            class,
                            args: vec![],
                            state,
                        })
                    }
                    _ => bail!("copyreg._reconstructor: class is not a global"),
                },
                _ => bail!("copyreg._reconstructor: expected 3 arguments"),
            },
            _ => self.node(Node::Object {
                class: format!("{module}.{name}"),
                args,
                state: None,
            }),
        };
        Ok(r)
    }

    /// `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
    /// backward_hooks, metadata=None)`: a strided view of the storage, bounds checked.
    fn rebuild_tensor(&self, args: &[Ref]) -> Result<Tensor> {
        let (storage, offset, size, stride) = match args {
            [s, o, sz, st, ..] => (
                *s,
                self.int_of(*o, "storage_offset")?,
                self.ints_of(*sz, "size")?,
                self.ints_of(*st, "stride")?,
            ),
            _ => bail!("expected at least 4 arguments, got {}", args.len()),
        };
        let storage = match self.node_of(storage) {
            Some(Node::Value(Value::Tensor(t))) => t,
            _ => bail!("first argument is not a storage"),
        };
        let numel = storage.numel() as i64;
        if size.len() != stride.len() {
            bail!("size {size:?} and stride {stride:?} differ in length");
        }
        if offset < 0 || size.iter().chain(&stride).any(|&x| x < 0) {
            bail!("negative storage offset, size or stride: {offset}, {size:?}, {stride:?}");
        }
        let mut last = offset; // index of the last element
        let mut empty = false;
        for (&n, &s) in size.iter().zip(&stride) {
            if n == 0 {
                empty = true;
            } else {
                last = (n - 1)
                    .checked_mul(s)
                    .and_then(|x| x.checked_add(last))
                    .ok_or_else(|| anyhow!("size {size:?} with stride {stride:?} overflows"))?;
            }
        }
        if (empty && offset > numel) || (!empty && last >= numel) {
            bail!("size {size:?}, stride {stride:?}, offset {offset} reach past the storage of {numel} elements");
        }
        Ok(storage.f_as_strided(size.as_slice(), stride.as_slice(), offset)?)
    }

    fn to_value(&self, r: Ref, depth: usize, budget: &mut usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            bail!("containers nested deeper than {MAX_DEPTH} levels (or a cycle)");
        }
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| anyhow!("pickle expands to too many objects (shared references)"))?;
        let node = match r {
            Ref::None => return Ok(Value::None),
            Ref::Bool(b) => return Ok(Value::Bool(b)),
            Ref::Int(i) => return Ok(Value::Int(i)),
            Ref::Float(f) => return Ok(Value::Float(f)),
            Ref::Node(i) => self
                .arena
                .get(i)
                .ok_or_else(|| anyhow!("dangling reference"))?,
        };
        let seq = |v: &[Ref], budget: &mut usize| -> Result<Vec<Value>> {
            v.iter()
                .map(|&x| self.to_value(x, depth + 1, budget))
                .collect()
        };
        Ok(match node {
            Node::Str(s) => {
                *budget = budget
                    .checked_sub(s.len() / 16)
                    .ok_or_else(|| anyhow!("pickle expands to too much data"))?;
                Value::Str(s.clone())
            }
            Node::Bytes(b) => {
                *budget = budget
                    .checked_sub(b.len() / 16)
                    .ok_or_else(|| anyhow!("pickle expands to too much data"))?;
                Value::Bytes(b.clone())
            }
            Node::List(v) => Value::List(seq(v, budget)?),
            Node::Tuple(v) => Value::Tuple(seq(v, budget)?),
            Node::Set(v) => Value::Object {
                class: "builtins.set".into(),
                args: vec![Value::List(seq(v, budget)?)],
                state: None,
            },
            Node::Dict(kv) => {
                let mut seen: HashMap<String, usize> = HashMap::new();
                let mut items: Vec<(Value, Value)> = Vec::with_capacity(kv.len());
                for &(k, v) in kv {
                    let val = self.to_value(v, depth + 1, budget)?;
                    match self.key_of(k).and_then(|key| match seen.entry(key) {
                        Entry::Occupied(e) => Some(*e.get()),
                        Entry::Vacant(e) => {
                            e.insert(items.len());
                            None
                        }
                    }) {
                        Some(p) => items[p].1 = val,
                        None => items.push((self.to_value(k, depth + 1, budget)?, val)),
                    }
                }
                Value::Dict(items)
            }
            Node::Global(m, n) => Value::Object {
                class: format!("{m}.{n}"),
                args: vec![],
                state: None,
            },
            Node::Object { class, args, state } => Value::Object {
                class: class.clone(),
                args: seq(args, budget)?,
                state: match state {
                    Some(s) => Some(Box::new(self.to_value(*s, depth + 1, budget)?)),
                    None => None,
                },
            },
            Node::Value(v) => v.clone(),
        })
    }
}

fn pairs(items: Vec<Ref>) -> Result<Vec<(Ref, Ref)>> {
    if !items.len().is_multiple_of(2) {
        bail!("odd number of items for a dict");
    }
    Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}

// ------------------------------------------------------------------------------------------
// Writing (protocol 2, the opcodes `torch.save` emits)
// ------------------------------------------------------------------------------------------

/// Where a tensor lives in the archive: `('storage', torch.<storage_type>, key, 'cpu', numel)`
/// plus the view arguments of `_rebuild_tensor_v2`.
pub struct TensorRef {
    pub storage_type: &'static str,
    pub key: String,
    pub numel: i64,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
    pub requires_grad: bool,
}

/// Pickles `value`; tensors are written as persistent ids given by `tensor_ref`, called in
/// depth-first order. `Object { class: "collections.OrderedDict", args: [Dict(..)] }` is written
/// as an `OrderedDict`, other objects as `class(*args)` plus `BUILD state`.
pub fn pickle(
    value: &Value,
    tensor_ref: &mut dyn FnMut(&Tensor) -> Result<TensorRef>,
) -> Result<Vec<u8>> {
    let mut out = vec![0x80, 2];
    write_value(&mut out, value, tensor_ref)?;
    out.push(b'.');
    Ok(out)
}

fn write_global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_int(out: &mut Vec<u8>, i: i64) {
    if (0..256).contains(&i) {
        out.extend_from_slice(&[b'K', i as u8]);
    } else if (0..65536).contains(&i) {
        out.push(b'M');
        out.extend_from_slice(&(i as u16).to_le_bytes());
    } else if i32::try_from(i).is_ok() {
        out.push(b'J');
        out.extend_from_slice(&(i as i32).to_le_bytes());
    } else {
        let b = i.to_le_bytes();
        // Shortest two's complement: drop redundant sign bytes.
        let mut n = 8;
        while n > 1
            && ((b[n - 1] == 0 && b[n - 2] & 0x80 == 0)
                || (b[n - 1] == 0xff && b[n - 2] & 0x80 != 0))
        {
            n -= 1;
        }
        out.extend_from_slice(&[0x8a, n as u8]);
        out.extend_from_slice(&b[..n]);
    }
}

fn write_ints_tuple(out: &mut Vec<u8>, v: &[i64]) -> Result<()> {
    let items: Vec<Value> = v.iter().map(|&i| Value::Int(i)).collect();
    write_tuple(out, &items, &mut |_| bail!("no tensors in a shape"))
}

/// `EMPTY_TUPLE`, `TUPLE1..3`, or `MARK items… TUPLE`.
fn write_tuple(
    out: &mut Vec<u8>,
    items: &[Value],
    f: &mut dyn FnMut(&Tensor) -> Result<TensorRef>,
) -> Result<()> {
    if items.is_empty() {
        out.push(b')');
        return Ok(());
    }
    if items.len() > 3 {
        out.push(b'(');
    }
    for x in items {
        write_value(out, x, f)?;
    }
    out.push(match items.len() {
        1 => 0x85,
        2 => 0x86,
        3 => 0x87,
        _ => b't',
    });
    Ok(())
}

/// `MARK items… SETITEMS` in batches of 1000, like CPython's pickler.
fn write_items(
    out: &mut Vec<u8>,
    items: &[(Value, Value)],
    f: &mut dyn FnMut(&Tensor) -> Result<TensorRef>,
) -> Result<()> {
    for batch in items.chunks(1000) {
        out.push(b'(');
        for (k, v) in batch {
            write_value(out, k, f)?;
            write_value(out, v, f)?;
        }
        out.push(b'u');
    }
    Ok(())
}

fn write_value(
    out: &mut Vec<u8>,
    value: &Value,
    f: &mut dyn FnMut(&Tensor) -> Result<TensorRef>,
) -> Result<()> {
    match value {
        Value::None => out.push(b'N'),
        Value::Bool(b) => out.push(if *b { 0x88 } else { 0x89 }),
        Value::Int(i) => write_int(out, *i),
        Value::Float(x) => {
            out.push(b'G');
            out.extend_from_slice(&x.to_be_bytes());
        }
        Value::Str(s) => write_str(out, s),
        Value::Bytes(b) => {
            // Protocol 2 spelling of bytes: _codecs.encode(latin1 text, 'latin1').
            write_global(out, "_codecs", "encode");
            write_str(out, &b.iter().map(|&c| c as char).collect::<String>());
            write_str(out, "latin1");
            out.extend_from_slice(&[0x86, b'R']);
        }
        Value::List(v) => {
            out.push(b']');
            for batch in v.chunks(1000) {
                out.push(b'(');
                for x in batch {
                    write_value(out, x, f)?;
                }
                out.push(b'e');
            }
        }
        Value::Tuple(v) => write_tuple(out, v, f)?,
        Value::Dict(items) => {
            out.push(b'}');
            write_items(out, items, f)?;
        }
        Value::Tensor(t) => {
            let r = f(t)?;
            write_global(out, "torch._utils", "_rebuild_tensor_v2");
            out.push(b'(');
            out.push(b'(');
            write_str(out, "storage");
            write_global(out, "torch", r.storage_type);
            write_str(out, &r.key);
            write_str(out, "cpu");
            write_int(out, r.numel);
            out.push(b't');
            out.push(b'Q');
            write_int(out, r.offset);
            write_ints_tuple(out, &r.size)?;
            write_ints_tuple(out, &r.stride)?;
            out.push(if r.requires_grad { 0x88 } else { 0x89 });
            write_global(out, "collections", "OrderedDict");
            out.extend_from_slice(b")R");
            out.extend_from_slice(b"tR");
        }
        Value::Object { class, args, state } => {
            let (module, name) = class.rsplit_once('.').ok_or_else(|| {
                anyhow!("cannot pickle object of class {class:?}: not a module.name")
            })?;
            write_global(out, module, name);
            if class == "collections.OrderedDict" {
                out.extend_from_slice(b")R");
                if let Some(Value::Dict(items)) = args.first() {
                    write_items(out, items, f)?;
                }
            } else {
                write_tuple(out, args, f)?;
                out.push(b'R');
            }
            if let Some(s) = state {
                write_value(out, s, f)?;
                out.push(b'b');
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn load(data: &[u8]) -> Result<Value> {
        unpickle(data, &mut |pid| bail!("unexpected persistent id {pid}"))
    }

    // pickle.dumps(obj, protocol=N) from CPython 3.11.
    const P2: &str = "80027d71002858010000006171014b0158010000006271025d710328473ff80000000000004e88896558010000006371044b014b024b038771055801000000647106580600000068c3a96c6c6f710758010000006571084a90eefeff58010000006671098a06000000000001580100000067710a8a080000000000000080580100000068710b8a09000000000000000040580100000069710c635f636f646563730a656e636f64650a710d580300000000c3bf710e58060000006c6174696e31710f8671105271114b072958010000006a71124b0485711358010000006b71144b054b0686711558010000006c71165d7117284b014b024b034b0474711861752e";
    const P4_2: &str = "80027d71002858010000006171014b0158010000006271025d710328473ff80000000000004e88655801000000647104580600000068c3a96c6c6f71055801000000697106635f636f646563730a656e636f64650a7107580300000000c3bf710858060000006c6174696e31710986710a52710b580100000073710c635f5f6275696c74696e5f5f0a7365740a710d5d710e4b036185710f52711058010000006e71116361726770617273650a4e616d6573706163650a7112298171137d71142858010000007871154b01580100000079711658010000007a71177562752e";
    const P4_4: &str = "80049571000000000000007d94288c0161944b018c0162945d9428473ff80000000000004e88658c0164948c0668c3a96c6c6f948c016994430200ff948c0173948f94284b03908c016e948c086172677061727365948c094e616d6573706163659493942981947d94288c0178944b018c0179948c017a947562752e";
    const P4_5: &str = "80059571000000000000007d94288c0161944b018c0162945d9428473ff80000000000004e88658c0164948c0668c3a96c6c6f948c016994430200ff948c0173948f94284b03908c016e948c086172677061727365948c094e616d6573706163659493942981947d94288c0178944b018c0179948c017a947562752e";
    const ORDERED: &str = "800263636f6c6c656374696f6e730a4f726465726564446963740a7100295271012858010000007871024b0158010000007971035d71044b0261752e";

    #[test]
    fn scalars_containers_and_big_ints() {
        let v = load(&hex(P2)).unwrap();
        assert_eq!(
            v.to_string(),
            "{'a': 1, 'b': [1.5, None, True, False], 'c': (1, 2, 3), 'd': 'héllo', 'e': -70000, \
             'f': 1099511627776, 'g': -9223372036854775808, \
             'h': builtins.int(b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00@'), 'i': b'\\x00\\xff', \
             7: (), 'j': (4,), 'k': (5, 6), 'l': [(1, 2, 3, 4)]}"
        );
        assert_eq!(v.get("g").and_then(Value::as_int), Some(i64::MIN));
        assert_eq!(v.get("d").and_then(Value::as_str), Some("héllo"));
    }

    #[test]
    fn protocols_2_4_5_agree() {
        let want = "{'a': 1, 'b': [1.5, None, True], 'd': 'héllo', 'i': b'\\x00\\xff', \
                    's': builtins.set([3]), 'n': argparse.Namespace(x=1, y='z')}";
        for p in [P4_2, P4_4, P4_5] {
            let v = load(&hex(p)).unwrap();
            assert_eq!(v.to_string(), want);
            assert_eq!(
                v.get("n").and_then(|n| n.get("y")).and_then(Value::as_str),
                Some("z")
            );
        }
    }

    #[test]
    fn ordered_dict_and_memo_sharing() {
        assert_eq!(
            load(&hex(ORDERED)).unwrap().to_string(),
            "{'x': 1, 'y': [2]}"
        );
        // l = []; [l, l]: the memo refers to the same list.
        assert_eq!(
            load(&hex("80025d7100285d71016801652e"))
                .unwrap()
                .to_string(),
            "[[], []]"
        );
        // A list memoized empty and filled afterwards is seen filled through the memo.
        let p = b"\x80\x02]q\x00(K\x01K\x02e]q\x01(h\x00h\x00e.";
        assert_eq!(load(p).unwrap().to_string(), "[[1, 2], [1, 2]]");
        // Duplicate keys: last wins, first position kept.
        let p = b"}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bK\x02X\x01\x00\x00\x00aK\x03u.";
        assert_eq!(load(p).unwrap().to_string(), "{'a': 3, 'b': 2}");
    }

    #[test]
    fn writer_round_trips() {
        for p in [P2, P4_4, ORDERED] {
            let v = load(&hex(p)).unwrap();
            let bytes = pickle(&v, &mut |_| bail!("no tensors")).unwrap();
            assert_eq!(load(&bytes).unwrap().to_string(), v.to_string());
        }
        for i in [
            0,
            255,
            256,
            65535,
            65536,
            -1,
            i32::MIN as i64,
            i32::MAX as i64 + 1,
            i64::MIN,
            i64::MAX,
        ] {
            let bytes = pickle(&Value::Int(i), &mut |_| bail!("no tensors")).unwrap();
            assert_eq!(load(&bytes).unwrap().as_int(), Some(i));
        }
    }

    #[test]
    fn dangerous_globals_are_refused() {
        for (m, n) in [
            ("os", "system"),
            ("posix", "system"),
            ("nt", "system"),
            ("builtins", "eval"),
            ("__builtin__", "__import__"),
            ("subprocess", "check_output"),
            ("builtins", "getattr"),
        ] {
            let p = format!("\u{80}\u{2}c{m}\n{n}\n.");
            let bytes: Vec<u8> = p.chars().map(|c| c as u8).collect();
            let err = format!("{:#}", load(&bytes).unwrap_err());
            assert!(err.contains(&format!("{m}.{n}")), "{err}");
        }
        // Harmless builtins and unknown classes are fine (opaque, never called).
        assert_eq!(
            load(b"c__builtin__\nset\n)R.").unwrap().to_string(),
            "builtins.set([])"
        );
        assert_eq!(
            load(b"ctorch\nfloat32\n.").unwrap().to_string(),
            "torch.float32()"
        );
    }

    #[test]
    fn malformed_pickles_error_without_panicking() {
        for (p, want) in [
            (&b""[..], "without STOP"),
            (b"\x80\x02", "without STOP"),
            (b"\x80\x09.", "protocol 9"),
            (b"a.", "underflow"),
            (b"(u.", "stack underflow"),
            (b"\xff", "unknown opcode"),
            (b"h\x05.", "memo key 5"),
            (b"X\xff\xff\xff\xff", "exceeds"),
            (b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff", "exceeds"),
            (b"K\x01K\x02R.", "not a tuple"),
            (b"N)R.", "not a global"),
            (b"\x80\x02(K\x01d.", "odd number"),
            (b"\x97.", "out-of-band"),
        ] {
            let err = format!("{:#}", load(p).unwrap_err());
            assert!(err.contains(want), "{p:?}: {err}");
        }
        // Every prefix and every single-byte change of a real pickle: an error or a value.
        let good = hex(P4_2);
        for i in 0..good.len() {
            let _ = load(&good[..i]);
            for x in [0x01u8, 0x40, 0xff] {
                let mut b = good.clone();
                b[i] ^= x;
                let _ = load(&b);
            }
        }
    }

    #[test]
    fn nesting_and_expansion_are_bounded() {
        // 100000 nested lists.
        let mut p = vec![b']'; 100_000];
        p.extend(std::iter::repeat_n(b'a', 99_999));
        p.push(b'.');
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("nested deeper"));
        // Billion laughs: each level is a list of the previous one twice.
        let mut p = b"]q\x00".to_vec();
        for i in 0..60u8 {
            p.extend_from_slice(&[b']', b'(', b'h', i, b'h', i, b'e', b'q', i + 1]);
        }
        p.push(b'.');
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("too many"));
        // A self-containing list (a cycle).
        let p = b"]q\x00h\x00a.";
        assert!(format!("{:#}", load(p).unwrap_err()).contains("nested deeper"));
    }
}
