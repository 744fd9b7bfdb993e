//! Reader for PyTorch `.pth` state dicts in the legacy (pre-zip) `torch.save` format.
//!
//! Layout: five pickles back to back (magic number, protocol version, system info,
//! the state dict, the list of storage keys), then for every key in that list an
//! int64 little-endian element count followed by the raw little-endian elements.
//!
//! Only the pickle opcodes such files use are implemented, and no Python callable is
//! ever "called": the few globals we accept (`OrderedDict`, `_rebuild_tensor_v2`, ...)
//! are interpreted structurally. We don't use `serde-pickle` because it rejects the
//! persistent-id opcodes (`BINPERSID`) that every torch storage reference goes through,
//! and it turns unknown callables such as `_rebuild_tensor_v2` into `None`, losing the
//! shape/stride/offset arguments we need.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A dense, row-major f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

pub type StateDict = BTreeMap<String, Tensor>;

#[derive(Debug, thiserror::Error)]
pub enum PthError {
    // `error`, not `source`: the message carries it (see GraphError).
    #[error("{path}: {error}")]
    Io {
        path: String,
        error: std::io::Error,
    },
    /// Wraps any format error with the file it came from.
    #[error("{path}: {error}")]
    InFile { path: String, error: Box<PthError> },
    #[error(
        "zip-based torch.save archive: only the legacy (pre-zip, torch < 1.6 style) format is supported"
    )]
    ZipFormat,
    #[error("bad magic number: not a legacy torch.save file")]
    BadMagic,
    #[error("unsupported torch serialization protocol version {0} (expected 1001)")]
    BadProtocolVersion(i64),
    #[error("file was saved on a big-endian machine; only little-endian is supported")]
    BigEndian,
    #[error("unsupported pickle opcode 0x{opcode:02x} ({printable:?}) at offset {offset}")]
    UnsupportedOpcode {
        opcode: u8,
        printable: char,
        offset: usize,
    },
    #[error("pickle truncated at offset {offset} while reading {what}")]
    TruncatedPickle { offset: usize, what: &'static str },
    #[error("malformed pickle at offset {offset}: {msg}")]
    Malformed { offset: usize, msg: String },
    #[error("unsupported callable {module}.{name} at offset {offset}")]
    UnsupportedCallable {
        module: String,
        name: String,
        offset: usize,
    },
    #[error("state dict entry {key:?}: {msg}")]
    BadEntry { key: String, msg: String },
    #[error("storage {key} is listed but no tensor references it, so its element size is unknown")]
    UnreferencedStorage { key: String },
    #[error(
        "storage {key} truncated: needs {needed} bytes at offset {offset}, file has {available}"
    )]
    TruncatedStorage {
        key: String,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("storage {key} holds {actual} elements but its reference says {expected}")]
    StorageSizeMismatch {
        key: String,
        expected: usize,
        actual: usize,
    },
    #[error("storage {key} referenced by a tensor is missing from the storage key list")]
    MissingStorage { key: String },
    #[error("{0} trailing bytes after the last storage")]
    TrailingBytes(usize),
}

/// Loads every float tensor of a legacy `.pth` state dict. Integer tensors
/// (e.g. BatchNorm's `num_batches_tracked`) are skipped.
pub fn load_state_dict(path: &Path) -> Result<StateDict, PthError> {
    let bytes = std::fs::read(path).map_err(|source| PthError::Io {
        path: path.display().to_string(),
        error: source,
    })?;
    load_state_dict_from_bytes(&bytes).map_err(|e| PthError::InFile {
        path: path.display().to_string(),
        error: Box::new(e),
    })
}

/// `0x1950a86a20f9469cfc6c`, the magic number torch writes as a pickled int.
const MAGIC_NUMBER: u128 = 0x1950a86a20f9469cfc6c;
const PROTOCOL_VERSION: i64 = 1001;

pub fn load_state_dict_from_bytes(bytes: &[u8]) -> Result<StateDict, PthError> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(PthError::ZipFormat);
    }
    let mut pos = 0usize;

    let (magic, next) = unpickle(bytes, pos)?;
    pos = next;
    if magic.as_u128() != Some(MAGIC_NUMBER) {
        return Err(PthError::BadMagic);
    }

    let (version, next) = unpickle(bytes, pos)?;
    pos = next;
    match version {
        Value::Int(PROTOCOL_VERSION) => {}
        Value::Int(v) => return Err(PthError::BadProtocolVersion(v)),
        _ => return Err(PthError::BadMagic),
    }

    let (sys_info, next) = unpickle(bytes, pos)?;
    pos = next;
    if let Some(Value::Bool(false)) = sys_info.dict_get("little_endian") {
        return Err(PthError::BigEndian);
    }

    let (state, next) = unpickle(bytes, pos)?;
    pos = next;
    let (key_list, next) = unpickle(bytes, pos)?;
    pos = next;

    let entries = match state {
        Value::Dict(items) => items,
        other => {
            return Err(PthError::Malformed {
                offset: pos,
                msg: format!("top-level object is {}, expected a dict", other.kind()),
            });
        }
    };
    let keys = match key_list {
        Value::List(items) | Value::Tuple(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Str(s) => Ok(s),
                other => Err(PthError::Malformed {
                    offset: pos,
                    msg: format!("storage key list holds {}, expected str", other.kind()),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(PthError::Malformed {
                offset: pos,
                msg: format!("storage key list is {}, expected a list", other.kind()),
            });
        }
    };

    // Collect tensor references first: the storage section has no type tags, so
    // each storage's element size comes from the references to it.
    let mut refs: Vec<(String, TensorRef)> = Vec::with_capacity(entries.len());
    let mut storage_types: HashMap<String, (StorageType, usize)> = HashMap::new();
    for (k, v) in entries {
        let key = match k {
            Value::Str(s) => s,
            other => {
                return Err(PthError::Malformed {
                    offset: pos,
                    msg: format!("state dict key is {}, expected str", other.kind()),
                });
            }
        };
        let t = match v {
            Value::Tensor(t) => t,
            other => {
                return Err(PthError::BadEntry {
                    key,
                    msg: format!("value is {}, expected a tensor", other.kind()),
                });
            }
        };
        if let Some((ty, size)) = storage_types.get(&t.storage_key) {
            if *ty != t.storage_type || *size != t.storage_size {
                return Err(PthError::BadEntry {
                    key,
                    msg: format!(
                        "storage {} referenced with conflicting type/size",
                        t.storage_key
                    ),
                });
            }
        } else {
            storage_types.insert(t.storage_key.clone(), (t.storage_type, t.storage_size));
        }
        refs.push((key, t));
    }

    // Walk the raw storage section in key-list order.
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in &keys {
        let (ty, declared) = *storage_types
            .get(key)
            .ok_or_else(|| PthError::UnreferencedStorage { key: key.clone() })?;
        let count_bytes = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| PthError::TruncatedStorage {
                key: key.clone(),
                offset: pos,
                needed: 8,
                available: bytes.len().saturating_sub(pos),
            })?;
        let count = i64::from_le_bytes(to_array(count_bytes));
        let count = usize::try_from(count).map_err(|_| PthError::Malformed {
            offset: pos,
            msg: format!("negative element count {count} for storage {key}"),
        })?;
        pos += 8;
        if count != declared {
            return Err(PthError::StorageSizeMismatch {
                key: key.clone(),
                expected: declared,
                actual: count,
            });
        }
        let needed = count
            .checked_mul(ty.element_size())
            .ok_or_else(|| PthError::Malformed {
                offset: pos,
                msg: format!("storage {key} size overflows"),
            })?;
        let data = bytes
            .get(pos..pos + needed)
            .ok_or_else(|| PthError::TruncatedStorage {
                key: key.clone(),
                offset: pos,
                needed,
                available: bytes.len().saturating_sub(pos),
            })?;
        storages.insert(key.clone(), data);
        pos += needed;
    }
    if pos != bytes.len() {
        return Err(PthError::TrailingBytes(bytes.len() - pos));
    }

    let mut out = StateDict::new();
    for (key, t) in refs {
        if t.storage_type != StorageType::Float {
            if t.storage_type.is_integer() {
                continue;
            }
            return Err(PthError::BadEntry {
                key,
                msg: format!(
                    "{:?} tensors are not supported (float32 only)",
                    t.storage_type
                ),
            });
        }
        let storage = storages
            .get(&t.storage_key)
            .ok_or_else(|| PthError::MissingStorage {
                key: t.storage_key.clone(),
            })?;
        let data = gather_strided(storage, &t).map_err(|msg| PthError::BadEntry {
            key: key.clone(),
            msg,
        })?;
        out.insert(
            key,
            Tensor {
                shape: t.size,
                data,
            },
        );
    }
    Ok(out)
}

fn to_array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Materialises an f32 tensor in row-major order from its storage bytes. Views with
/// arbitrary strides are gathered (the Lite0 checkpoint stores every conv weight as a
/// permuted view of TF's HWIO layout); only out-of-bounds views are rejected.
fn gather_strided(storage: &[u8], t: &TensorRef) -> Result<Vec<f32>, String> {
    if t.stride.len() != t.size.len() {
        return Err(format!(
            "size {:?} and stride {:?} differ in rank",
            t.size, t.stride
        ));
    }
    let numel: usize = t.size.iter().product();
    if numel == 0 {
        return Ok(Vec::new());
    }
    let elems = storage.len() / 4;
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&s, &st)| {
            acc.checked_add((s - 1).checked_mul(st)?)
        });
    match last {
        Some(last) if last < elems => {}
        _ => {
            return Err(format!(
                "view (offset {}, size {:?}, stride {:?}) exceeds storage {} of {} elements",
                t.offset, t.size, t.stride, t.storage_key, elems
            ));
        }
    }
    let read = |i: usize| f32::from_le_bytes(to_array(&storage[i * 4..i * 4 + 4]));

    let mut out = Vec::with_capacity(numel);
    let rank = t.size.len();
    let mut idx = vec![0usize; rank];
    let mut off = t.offset;
    for _ in 0..numel {
        out.push(read(off));
        // Odometer increment, last dim fastest.
        for d in (0..rank).rev() {
            idx[d] += 1;
            off += t.stride[d];
            if idx[d] < t.size[d] {
                break;
            }
            off -= t.stride[d] * t.size[d];
            idx[d] = 0;
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageType {
    Float,
    Double,
    Half,
    BFloat16,
    Long,
    Int,
    Short,
    Char,
    Byte,
    Bool,
}

impl StorageType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::Float,
            "DoubleStorage" => Self::Double,
            "HalfStorage" => Self::Half,
            "BFloat16Storage" => Self::BFloat16,
            "LongStorage" => Self::Long,
            "IntStorage" => Self::Int,
            "ShortStorage" => Self::Short,
            "CharStorage" => Self::Char,
            "ByteStorage" => Self::Byte,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn element_size(self) -> usize {
        match self {
            Self::Double | Self::Long => 8,
            Self::Float | Self::Int => 4,
            Self::Half | Self::BFloat16 | Self::Short => 2,
            Self::Char | Self::Byte | Self::Bool => 1,
        }
    }

    fn is_integer(self) -> bool {
        matches!(
            self,
            Self::Long | Self::Int | Self::Short | Self::Char | Self::Byte | Self::Bool
        )
    }
}

/// What `_rebuild_tensor_v2(storage, offset, size, stride, ...)` describes.
#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    storage_key: String,
    storage_type: StorageType,
    storage_size: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// The subset of Python objects these pickles build.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// Integer too wide for i64 (only the magic number), little-endian two's complement.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global {
        module: String,
        name: String,
    },
    PersistentId(Box<Value>),
    Tensor(TensorRef),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global { .. } => "global",
            Value::PersistentId(_) => "persistent id",
            Value::Tensor(_) => "tensor",
        }
    }

    fn as_u128(&self) -> Option<u128> {
        match self {
            Value::Int(v) => u128::try_from(*v).ok(),
            Value::BigInt(b) if b.len() <= 16 && b.last().is_none_or(|&x| x & 0x80 == 0) => {
                let mut a = [0u8; 16];
                a[..b.len()].copy_from_slice(b);
                Some(u128::from_le_bytes(a))
            }
            _ => None,
        }
    }

    fn dict_get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

// Pickle opcodes (protocol 0-4) that torch's legacy writer emits, plus a few cheap
// neighbours so hand-written or re-saved files also load.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const EMPTY_LIST: u8 = b']';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
}

/// A stack machine for one pickle. The memo stores snapshots (values are cloned on
/// GET): torch state dicts never mutate a container after fetching it from the memo,
/// so Python's shared-reference semantics are not needed.
struct Unpickler<'a> {
    buf: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

/// Runs one pickle starting at `start`; returns its value and the offset after STOP.
fn unpickle(buf: &[u8], start: usize) -> Result<(Value, usize), PthError> {
    let mut u = Unpickler {
        buf,
        pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let v = u.run()?;
    Ok((v, u.pos))
}

impl<'a> Unpickler<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PthError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(PthError::TruncatedPickle {
                offset: self.pos,
                what,
            }),
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, PthError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, PthError> {
        Ok(u16::from_le_bytes(to_array(self.take(2, what)?)))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, PthError> {
        Ok(u32::from_le_bytes(to_array(self.take(4, what)?)))
    }

    fn line(&mut self, what: &'static str) -> Result<String, PthError> {
        let rest = &self.buf[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PthError::TruncatedPickle {
                offset: self.pos,
                what,
            })?;
        let s = self.utf8(&rest[..n])?;
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&self, b: &[u8]) -> Result<String, PthError> {
        String::from_utf8(b.to_vec()).map_err(|_| self.malformed("invalid UTF-8 string"))
    }

    fn malformed(&self, msg: impl Into<String>) -> PthError {
        PthError::Malformed {
            offset: self.pos,
            msg: msg.into(),
        }
    }

    fn pop(&mut self) -> Result<Value, PthError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PthError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("no MARK on the stack"))?;
        Ok(self.stack.split_off(m))
    }

    fn top_mut(&mut self) -> Result<&mut Value, PthError> {
        let pos = self.pos;
        self.stack.last_mut().ok_or(PthError::Malformed {
            offset: pos,
            msg: "stack underflow".into(),
        })
    }

    fn memo_put(&mut self, id: u32) -> Result<(), PthError> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.malformed("PUT on empty stack"))?;
        self.memo.insert(id, v);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<(), PthError> {
        let v = self
            .memo
            .get(&id)
            .cloned()
            .ok_or_else(|| self.malformed(format!("memo key {id} not found")))?;
        self.stack.push(v);
        Ok(())
    }

    fn run(&mut self) -> Result<Value, PthError> {
        loop {
            let at = self.pos;
            let code = self.u8("opcode")?;
            match code {
                op::PROTO => {
                    self.u8("protocol")?;
                }
                op::FRAME => {
                    self.take(8, "frame length")?;
                }
                op::STOP => {
                    let v = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return Err(self.malformed("STOP with a non-empty stack"));
                    }
                    return Ok(v);
                }
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    self.pop()?;
                }
                op::NONE => self.stack.push(Value::None),
                op::NEWTRUE => self.stack.push(Value::Bool(true)),
                op::NEWFALSE => self.stack.push(Value::Bool(false)),
                op::BININT => {
                    let v = self.u32("BININT")? as i32;
                    self.stack.push(Value::Int(v.into()));
                }
                op::BININT1 => {
                    let v = self.u8("BININT1")?;
                    self.stack.push(Value::Int(v.into()));
                }
                op::BININT2 => {
                    let v = self.u16("BININT2")?;
                    self.stack.push(Value::Int(v.into()));
                }
                op::LONG1 => {
                    let n = self.u8("LONG1 length")? as usize;
                    let b = self.take(n, "LONG1 bytes")?;
                    self.stack.push(long_from_le(b));
                }
                op::BINFLOAT => {
                    // The one big-endian field in pickle.
                    let b = self.take(8, "BINFLOAT")?;
                    self.stack
                        .push(Value::Float(f64::from_be_bytes(to_array(b))));
                }
                op::BINUNICODE => {
                    let n = self.u32("BINUNICODE length")? as usize;
                    let b = self.take(n, "BINUNICODE bytes")?;
                    let s = self.utf8(b)?;
                    self.stack.push(Value::Str(s));
                }
                op::SHORT_BINUNICODE => {
                    let n = self.u8("SHORT_BINUNICODE length")? as usize;
                    let b = self.take(n, "SHORT_BINUNICODE bytes")?;
                    let s = self.utf8(b)?;
                    self.stack.push(Value::Str(s));
                }
                op::EMPTY_TUPLE => self.stack.push(Value::Tuple(Vec::new())),
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = (code - op::TUPLE1 + 1) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Value::Tuple(items));
                }
                op::EMPTY_LIST => self.stack.push(Value::List(Vec::new())),
                op::APPEND => {
                    let v = self.pop()?;
                    match self.top_mut()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.malformed("APPEND to a non-list")),
                    }
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    match self.top_mut()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.malformed("APPENDS to a non-list")),
                    }
                }
                op::EMPTY_DICT => self.stack.push(Value::Dict(Vec::new())),
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top_mut()? {
                        Value::Dict(d) => dict_set(d, k, v),
                        _ => return Err(self.malformed("SETITEM on a non-dict")),
                    }
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.malformed("SETITEMS with an odd item count"));
                    }
                    match self.top_mut()? {
                        Value::Dict(d) => {
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                dict_set(d, k, v);
                            }
                        }
                        _ => return Err(self.malformed("SETITEMS on a non-dict")),
                    }
                }
                op::BINPUT => {
                    let id = self.u8("BINPUT")?;
                    self.memo_put(id.into())?;
                }
                op::LONG_BINPUT => {
                    let id = self.u32("LONG_BINPUT")?;
                    self.memo_put(id)?;
                }
                op::MEMOIZE => {
                    let id = u32::try_from(self.memo.len())
                        .map_err(|_| self.malformed("memo overflow"))?;
                    self.memo_put(id)?;
                }
                op::BINGET => {
                    let id = self.u8("BINGET")?;
                    self.memo_get(id.into())?;
                }
                op::LONG_BINGET => {
                    let id = self.u32("LONG_BINGET")?;
                    self.memo_get(id)?;
                }
                op::GLOBAL => {
                    let module = self.line("GLOBAL module")?;
                    let name = self.line("GLOBAL name")?;
                    self.stack.push(Value::Global { module, name });
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => {
                            self.stack.push(Value::Global { module, name })
                        }
                        _ => return Err(self.malformed("STACK_GLOBAL needs two strings")),
                    }
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args, at)?;
                    self.stack.push(v);
                }
                op::BUILD => {
                    // Only OrderedDict's `_metadata` attribute reaches here; it carries
                    // no tensor data, so the state is dropped.
                    self.pop()?;
                    if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
                        return Err(self.malformed("BUILD without an object"));
                    }
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    self.stack.push(Value::PersistentId(Box::new(pid)));
                }
                other => {
                    return Err(PthError::UnsupportedOpcode {
                        opcode: other,
                        printable: if other.is_ascii_graphic() {
                            other as char
                        } else {
                            '?'
                        },
                        offset: at,
                    });
                }
            }
        }
    }

    /// Interprets the few callables a state dict uses, without executing anything.
    fn reduce(&self, callable: Value, args: Value, at: usize) -> Result<Value, PthError> {
        let (module, name) = match callable {
            Value::Global { module, name } => (module, name),
            other => {
                return Err(PthError::Malformed {
                    offset: at,
                    msg: format!("REDUCE on {}, expected a global", other.kind()),
                });
            }
        };
        let args = match args {
            Value::Tuple(a) => a,
            other => {
                return Err(PthError::Malformed {
                    offset: at,
                    msg: format!("REDUCE arguments are {}, expected a tuple", other.kind()),
                });
            }
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") if args.is_empty() => Ok(Value::Dict(Vec::new())),
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                rebuild_tensor(&args).map_err(|msg| PthError::Malformed { offset: at, msg })
            }
            // nn.Parameter(data, requires_grad, hooks): the data is all we keep.
            ("torch._utils", "_rebuild_parameter") => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(PthError::Malformed {
                    offset: at,
                    msg: "_rebuild_parameter without a tensor".into(),
                }),
            },
            _ => Err(PthError::UnsupportedCallable {
                module,
                name,
                offset: at,
            }),
        }
    }
}

fn dict_set(d: &mut Vec<(Value, Value)>, k: Value, v: Value) {
    if let Some(slot) = d.iter_mut().find(|(key, _)| *key == k) {
        slot.1 = v;
    } else {
        d.push((k, v));
    }
}

fn long_from_le(b: &[u8]) -> Value {
    if b.len() <= 8 {
        let negative = b.last().is_some_and(|&x| x & 0x80 != 0);
        let mut a = [if negative { 0xff } else { 0 }; 8];
        a[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(b.to_vec())
    }
}

fn as_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} is negative: {i}")),
        other => Err(format!("{what} is {}, expected int", other.kind())),
    }
}

fn as_usize_tuple(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) => items.iter().map(|i| as_usize(i, what)).collect(),
        other => Err(format!("{what} is {}, expected a tuple", other.kind())),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks)`
/// with storage = persistent id `('storage', <XStorage>, key, location, numel)`.
fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    if args.len() < 4 {
        return Err(format!(
            "_rebuild_tensor with {} arguments, expected at least 4",
            args.len()
        ));
    }
    let pid = match &args[0] {
        Value::PersistentId(p) => p.as_ref(),
        other => {
            return Err(format!(
                "tensor storage is {}, expected a persistent id",
                other.kind()
            ));
        }
    };
    let fields = match pid {
        Value::Tuple(f) if f.len() >= 5 => f,
        _ => return Err("storage persistent id is not a 5-tuple".into()),
    };
    if !matches!(&fields[0], Value::Str(s) if s == "storage") {
        return Err("persistent id does not start with 'storage'".into());
    }
    let storage_type = match &fields[1] {
        Value::Global { module, name } if module == "torch" => StorageType::from_name(name)
            .ok_or_else(|| format!("unsupported storage type torch.{name}"))?,
        other => {
            return Err(format!(
                "storage type is {}, expected torch.XStorage",
                other.kind()
            ));
        }
    };
    let storage_key = match &fields[2] {
        Value::Str(s) => s.clone(),
        other => return Err(format!("storage key is {}, expected str", other.kind())),
    };
    let storage_size = as_usize(&fields[4], "storage size")?;
    let offset = as_usize(&args[1], "storage offset")?;
    let size = as_usize_tuple(&args[2], "size")?;
    let stride = as_usize_tuple(&args[3], "stride")?;
    Ok(Value::Tensor(TensorRef {
        storage_key,
        storage_type,
        storage_size,
        offset,
        size,
        stride,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Minimal pickle writer for tests: protocol 2 opcodes, the way torch emits them.
    #[derive(Default)]
    pub(crate) struct PickleWriter {
        pub out: Vec<u8>,
    }

    impl PickleWriter {
        pub fn op(&mut self, b: u8) -> &mut Self {
            self.out.push(b);
            self
        }
        pub fn proto(&mut self) -> &mut Self {
            self.out.extend_from_slice(&[op::PROTO, 2]);
            self
        }
        pub fn int(&mut self, v: i64) -> &mut Self {
            if (0..256).contains(&v) {
                self.out.extend_from_slice(&[op::BININT1, v as u8]);
            } else if (0..65536).contains(&v) {
                self.out.push(op::BININT2);
                self.out.extend_from_slice(&(v as u16).to_le_bytes());
            } else {
                self.out.push(op::BININT);
                self.out.extend_from_slice(&(v as i32).to_le_bytes());
            }
            self
        }
        pub fn str(&mut self, s: &str) -> &mut Self {
            self.out.push(op::BINUNICODE);
            self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.out.extend_from_slice(s.as_bytes());
            self
        }
        pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.out.push(op::GLOBAL);
            self.out.extend_from_slice(module.as_bytes());
            self.out.push(b'\n');
            self.out.extend_from_slice(name.as_bytes());
            self.out.push(b'\n');
            self
        }
        pub fn tuple_of(&mut self, items: &[i64]) -> &mut Self {
            self.op(op::MARK);
            for &i in items {
                self.int(i);
            }
            self.op(op::TUPLE)
        }
        /// One `_rebuild_tensor_v2` call for a state dict value.
        pub fn tensor(
            &mut self,
            storage_type: &str,
            key: &str,
            storage_numel: i64,
            offset: i64,
            size: &[i64],
            stride: &[i64],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2");
            self.op(op::MARK);
            self.op(op::MARK)
                .str("storage")
                .global("torch", storage_type)
                .str(key)
                .str("cpu")
                .int(storage_numel)
                .op(op::TUPLE)
                .op(op::BINPERSID);
            self.int(offset).tuple_of(size).tuple_of(stride);
            self.op(op::NEWFALSE);
            self.global("collections", "OrderedDict")
                .op(op::EMPTY_TUPLE)
                .op(op::REDUCE);
            self.op(op::TUPLE).op(op::REDUCE)
        }
    }

    pub(crate) struct FakeTensor<'a> {
        pub name: &'a str,
        pub storage: &'a str,
        pub offset: i64,
        pub size: &'a [i64],
        pub stride: &'a [i64],
    }

    /// Builds a whole legacy `.pth` file: `storages` are (key, FloatStorage data).
    pub(crate) fn fake_pth(tensors: &[FakeTensor], storages: &[(&str, &[f32])]) -> Vec<u8> {
        let mut w = PickleWriter::default();
        // magic number as LONG1
        w.proto().op(op::LONG1).op(10);
        w.out.extend_from_slice(&MAGIC_NUMBER.to_le_bytes()[..10]);
        w.op(op::STOP);
        w.proto().int(PROTOCOL_VERSION).op(op::STOP);
        w.proto()
            .op(op::EMPTY_DICT)
            .op(op::MARK)
            .str("little_endian")
            .op(op::NEWTRUE)
            .op(op::SETITEMS)
            .op(op::STOP);
        w.proto()
            .global("collections", "OrderedDict")
            .op(op::BINPUT)
            .op(0)
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .op(op::MARK);
        for t in tensors {
            let numel = storages
                .iter()
                .find(|(k, _)| *k == t.storage)
                .map_or(0, |(_, d)| d.len() as i64);
            w.str(t.name)
                .tensor("FloatStorage", t.storage, numel, t.offset, t.size, t.stride);
        }
        w.op(op::SETITEMS);
        // `_metadata` attribute via BUILD, as torch writes it.
        w.op(op::EMPTY_DICT)
            .str("_metadata")
            .op(op::BINGET)
            .op(0)
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .op(op::SETITEM)
            .op(op::BUILD)
            .op(op::STOP);
        w.proto().op(op::EMPTY_LIST).op(op::MARK);
        for (k, _) in storages {
            w.str(k);
        }
        w.op(op::APPENDS).op(op::STOP);
        for (_, data) in storages {
            w.out.extend_from_slice(&(data.len() as i64).to_le_bytes());
            for v in *data {
                w.out.extend_from_slice(&v.to_le_bytes());
            }
        }
        w.out
    }

    #[test]
    fn decodes_scalars_and_containers() {
        let mut w = PickleWriter::default();
        w.proto()
            .op(op::EMPTY_DICT)
            .op(op::BINPUT)
            .op(0)
            .op(op::MARK)
            .str("a")
            .int(7)
            .str("b")
            .int(300)
            .str("c")
            .int(70000)
            .str("d")
            .op(op::NONE)
            .str("e")
            .op(op::EMPTY_LIST)
            .int(1)
            .op(op::APPEND)
            .op(op::MARK)
            .int(2)
            .int(3)
            .op(op::APPENDS)
            .op(op::SETITEMS)
            .str("f")
            .int(1)
            .int(2)
            .op(op::TUPLE2)
            .op(op::SETITEM)
            .op(op::STOP);
        let (v, end) = unpickle(&w.out, 0).expect("decodes");
        assert_eq!(end, w.out.len());
        assert_eq!(v.dict_get("a"), Some(&Value::Int(7)));
        assert_eq!(v.dict_get("b"), Some(&Value::Int(300)));
        assert_eq!(v.dict_get("c"), Some(&Value::Int(70000)));
        assert_eq!(v.dict_get("d"), Some(&Value::None));
        assert_eq!(
            v.dict_get("e"),
            Some(&Value::List(vec![
                Value::Int(1),
                Value::Int(2),
                Value::Int(3)
            ]))
        );
        assert_eq!(
            v.dict_get("f"),
            Some(&Value::Tuple(vec![Value::Int(1), Value::Int(2)]))
        );
    }

    #[test]
    fn negative_binint_and_long1() {
        // BININT is signed; LONG1 is two's complement little-endian.
        let bytes = [
            op::PROTO,
            2,
            op::BININT,
            0xfe,
            0xff,
            0xff,
            0xff,
            op::LONG1,
            2,
            0x00,
            0x80,
            op::TUPLE2,
            op::STOP,
        ];
        let (v, _) = unpickle(&bytes, 0).expect("decodes");
        assert_eq!(v, Value::Tuple(vec![Value::Int(-2), Value::Int(-32768)]));
    }

    #[test]
    fn memo_get_returns_stored_value() {
        let mut w = PickleWriter::default();
        w.proto().str("x").op(op::BINPUT).op(5).op(op::BINGET).op(5);
        w.op(op::LONG_BINPUT)
            .out
            .extend_from_slice(&9u32.to_le_bytes());
        w.op(op::LONG_BINGET)
            .out
            .extend_from_slice(&9u32.to_le_bytes());
        w.op(op::TUPLE3).op(op::STOP);
        let (v, _) = unpickle(&w.out, 0).expect("decodes");
        let x = Value::Str("x".into());
        assert_eq!(v, Value::Tuple(vec![x.clone(), x.clone(), x]));
    }

    #[test]
    fn binfloat_is_big_endian() {
        let mut bytes = vec![op::PROTO, 2, op::BINFLOAT];
        bytes.extend_from_slice(&1.5f64.to_be_bytes());
        bytes.push(op::STOP);
        assert_eq!(unpickle(&bytes, 0).expect("decodes").0, Value::Float(1.5));
    }

    #[test]
    fn unsupported_opcode_names_offset() {
        // 'c'-style INST opcode 'i' is never produced by torch.
        let bytes = [op::PROTO, 2, op::NONE, b'i', op::STOP];
        let err = unpickle(&bytes, 0).expect_err("must fail");
        match err {
            PthError::UnsupportedOpcode { opcode, offset, .. } => {
                assert_eq!(opcode, b'i');
                assert_eq!(offset, 3);
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(format!("{}", unpickle(&bytes, 0).expect_err("fails")).contains("at offset 3"));
    }

    #[test]
    fn truncated_pickle_is_reported() {
        let bytes = [op::PROTO, 2, op::BINUNICODE, 10, 0, 0, 0, b'a'];
        assert!(matches!(
            unpickle(&bytes, 0),
            Err(PthError::TruncatedPickle { .. })
        ));
    }

    #[test]
    fn unknown_callable_is_rejected() {
        let mut w = PickleWriter::default();
        w.proto()
            .global("os", "system")
            .str("true")
            .op(op::TUPLE1)
            .op(op::REDUCE)
            .op(op::STOP);
        match unpickle(&w.out, 0) {
            Err(PthError::UnsupportedCallable { module, name, .. }) => {
                assert_eq!((module.as_str(), name.as_str()), ("os", "system"));
            }
            other => panic!("expected UnsupportedCallable, got {other:?}"),
        }
    }

    #[test]
    fn rebuild_tensor_reads_persistent_id() {
        let mut w = PickleWriter::default();
        w.proto()
            .tensor("FloatStorage", "42", 24, 6, &[2, 3], &[3, 1])
            .op(op::STOP);
        let (v, _) = unpickle(&w.out, 0).expect("decodes");
        assert_eq!(
            v,
            Value::Tensor(TensorRef {
                storage_key: "42".into(),
                storage_type: StorageType::Float,
                storage_size: 24,
                offset: 6,
                size: vec![2, 3],
                stride: vec![3, 1],
            })
        );
    }

    #[test]
    fn whole_file_with_shared_storage_and_offset() {
        let shared: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let other = [100.0f32, 200.0];
        let bytes = fake_pth(
            &[
                FakeTensor {
                    name: "head",
                    storage: "s0",
                    offset: 0,
                    size: &[2, 2],
                    stride: &[2, 1],
                },
                // Views into the same storage at an element offset.
                FakeTensor {
                    name: "tail",
                    storage: "s0",
                    offset: 4,
                    size: &[3, 2],
                    stride: &[2, 1],
                },
                FakeTensor {
                    name: "bias",
                    storage: "s1",
                    offset: 1,
                    size: &[1],
                    stride: &[1],
                },
            ],
            &[("s0", &shared), ("s1", &other)],
        );
        let sd = load_state_dict_from_bytes(&bytes).expect("loads");
        assert_eq!(sd.len(), 3);
        assert_eq!(sd["head"].shape, vec![2, 2]);
        assert_eq!(sd["head"].data, vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(sd["tail"].shape, vec![3, 2]);
        assert_eq!(sd["tail"].data, vec![4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        assert_eq!(sd["bias"].data, vec![200.0]);
    }

    #[test]
    fn rejects_out_of_range_views() {
        let data = [1.0f32, 2.0, 3.0, 4.0];
        let bytes = fake_pth(
            &[FakeTensor {
                name: "w",
                storage: "s",
                offset: 2,
                size: &[3],
                stride: &[1],
            }],
            &[("s", &data)],
        );
        let err = load_state_dict_from_bytes(&bytes).expect_err("must fail");
        assert!(err.to_string().contains("\"w\""), "{err}");
        assert!(err.to_string().contains("exceeds storage"), "{err}");

        // In bounds only if the stride is ignored: must still fail.
        let bytes = fake_pth(
            &[FakeTensor {
                name: "t",
                storage: "s",
                offset: 0,
                size: &[2, 2],
                stride: &[3, 1],
            }],
            &[("s", &data)],
        );
        let err = load_state_dict_from_bytes(&bytes).expect_err("must fail");
        assert!(err.to_string().contains("exceeds storage"), "{err}");
    }

    #[test]
    fn permuted_views_are_gathered_row_major() {
        // A [2, 3] tensor stored transposed (column-major), as torch writes
        // `w.permute(...)` views: element (i, j) lives at offset + i * 1 + j * 2.
        let data = [0.0f32, 10.0, 1.0, 11.0, 2.0, 12.0, 99.0];
        let bytes = fake_pth(
            &[
                FakeTensor {
                    name: "t",
                    storage: "s",
                    offset: 0,
                    size: &[2, 3],
                    stride: &[1, 2],
                },
                // Same layout trick in 4-D, like the Lite0 conv weights (OIHW over HWIO).
                FakeTensor {
                    name: "w",
                    storage: "s",
                    offset: 1,
                    size: &[2, 3, 1, 1],
                    stride: &[1, 2, 6, 6],
                },
            ],
            &[("s", &data)],
        );
        let sd = load_state_dict_from_bytes(&bytes).expect("loads");
        assert_eq!(sd["t"].data, vec![0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);
        assert_eq!(sd["w"].shape, vec![2, 3, 1, 1]);
        assert_eq!(sd["w"].data, vec![10.0, 11.0, 12.0, 1.0, 2.0, 99.0]);
    }

    #[test]
    fn scalar_and_size_one_dims() {
        let data = [1.0f32, 2.0, 3.0];
        let bytes = fake_pth(
            &[FakeTensor {
                name: "w",
                storage: "s",
                offset: 0,
                size: &[3, 1, 1, 1],
                stride: &[1, 1, 1, 1],
            }],
            &[("s", &data)],
        );
        let sd = load_state_dict_from_bytes(&bytes).expect("loads");
        assert_eq!(sd["w"].data, data.to_vec());
        let bytes = fake_pth(
            &[FakeTensor {
                name: "x",
                storage: "s",
                offset: 2,
                size: &[],
                stride: &[],
            }],
            &[("s", &data)],
        );
        let sd = load_state_dict_from_bytes(&bytes).expect("loads");
        assert_eq!(sd["x"].shape, Vec::<usize>::new());
        assert_eq!(sd["x"].data, vec![3.0]);
    }

    #[test]
    fn bad_magic_and_truncated_storage() {
        let data = [1.0f32, 2.0];
        let good = fake_pth(
            &[FakeTensor {
                name: "w",
                storage: "s",
                offset: 0,
                size: &[2],
                stride: &[1],
            }],
            &[("s", &data)],
        );
        let mut bad = good.clone();
        bad[4] ^= 0xff; // inside the LONG1 magic bytes
        assert!(matches!(
            load_state_dict_from_bytes(&bad),
            Err(PthError::BadMagic)
        ));

        let cut = &good[..good.len() - 3];
        match load_state_dict_from_bytes(cut) {
            Err(PthError::TruncatedStorage { key, .. }) => assert_eq!(key, "s"),
            other => panic!("expected TruncatedStorage, got {other:?}"),
        }

        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            load_state_dict_from_bytes(&trailing),
            Err(PthError::TrailingBytes(1))
        ));

        assert!(matches!(
            load_state_dict_from_bytes(b"PK\x03\x04rest"),
            Err(PthError::ZipFormat)
        ));
    }

    #[test]
    fn load_error_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("broken.pth");
        std::fs::write(&p, [op::PROTO, 2, op::NONE, op::STOP]).expect("write");
        let err = load_state_dict(&p).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("broken.pth"), "{msg}");
        assert!(msg.contains("bad magic"), "{msg}");
    }
}
