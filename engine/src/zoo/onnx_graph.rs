//! A small owned ONNX graph builder on top of `onnx-rs`, plus a reader for a model
//! file's inputs and outputs.
//!
//! `onnx-rs`'s AST borrows every string and byte buffer, so the builder keeps owned
//! names, attributes and little-endian initializer bytes, and materialises the
//! borrowed AST only inside [`GraphBuilder::to_bytes`].

use std::collections::{HashMap, HashSet};
use std::path::Path;

use onnx_rs::ast::{
    Attribute, AttributeType, Dimension, Graph, Model, Node, OpType, OperatorSetId, TensorProto,
    TensorShape, TensorShapeDimension, TensorTypeProto, TypeProto, TypeValue, ValueInfo,
};

pub use onnx_rs::ast::DataType;

/// IR version 8 is what opset 17 ships with (onnx 1.12); onnxruntime reads it.
pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("name {0:?} is already defined in the graph")]
    DuplicateName(String),
    #[error("node {node:?} reads {input:?}, which is not defined before it")]
    UndefinedInput { node: String, input: String },
    #[error("graph output {0:?} is never produced")]
    UndefinedOutput(String),
    #[error("initializer {name:?}: shape {dims:?} needs {expected} values, got {actual}")]
    DataLength {
        name: String,
        dims: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("invalid ONNX model: {0}")]
    Parse(onnx_rs::Error),
    #[error("ONNX model has no graph")]
    NoGraph,
    // The messages carry the inner error; naming the fields `error` keeps thiserror from also
    // chaining it as a source, which would print it twice under `{:#}`.
    #[error("{path}: {error}")]
    Io {
        path: String,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    InFile {
        path: String,
        error: Box<GraphError>,
    },
}

/// One dimension of a declared tensor shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
    Unknown,
}

impl Dim {
    pub fn sym(name: &str) -> Self {
        Dim::Symbolic(name.to_string())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Floats(Vec<f32>),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub name: String,
    pub value: AttrValue,
}

impl Attr {
    pub fn int(name: &str, v: i64) -> Self {
        Self::new(name, AttrValue::Int(v))
    }
    pub fn ints(name: &str, v: &[i64]) -> Self {
        Self::new(name, AttrValue::Ints(v.to_vec()))
    }
    pub fn float(name: &str, v: f32) -> Self {
        Self::new(name, AttrValue::Float(v))
    }
    pub fn floats(name: &str, v: &[f32]) -> Self {
        Self::new(name, AttrValue::Floats(v.to_vec()))
    }
    pub fn string(name: &str, v: &str) -> Self {
        Self::new(name, AttrValue::Str(v.to_string()))
    }
    fn new(name: &str, value: AttrValue) -> Self {
        Self {
            name: name.to_string(),
            value,
        }
    }
}

/// Spatial padding of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// `auto_pad = SAME_UPPER`: output = ceil(input / stride), odd remainder at
    /// bottom/right, i.e. TensorFlow "SAME"; works for any input size.
    SameUpper,
    Explicit {
        top: usize,
        left: usize,
        bottom: usize,
        right: usize,
    },
    Valid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub group: usize,
    pub padding: Padding,
}

impl ConvParams {
    /// Square kernel, stride 1, no dilation, one group, no padding.
    pub fn new(kernel: usize) -> Self {
        Self {
            kernel: [kernel, kernel],
            stride: [1, 1],
            dilation: [1, 1],
            group: 1,
            padding: Padding::Valid,
        }
    }
}

#[derive(Debug, Clone)]
struct ValueDecl {
    name: String,
    elem: DataType,
    dims: Option<Vec<Dim>>,
}

#[derive(Debug, Clone)]
struct Init {
    name: String,
    dtype: DataType,
    dims: Vec<i64>,
    raw: Vec<u8>,
}

#[derive(Debug, Clone)]
struct NodeDecl {
    name: String,
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attrs: Vec<Attr>,
}

/// Builds an ONNX graph in topological order: every node input must already be a
/// graph input, an initializer or an earlier node's output.
#[derive(Debug)]
pub struct GraphBuilder {
    graph_name: String,
    inputs: Vec<ValueDecl>,
    outputs: Vec<ValueDecl>,
    inits: Vec<Init>,
    nodes: Vec<NodeDecl>,
    /// Names that hold a value (inputs, initializers, node outputs).
    defined: HashSet<String>,
    /// Names handed out by `fresh` or defined; `fresh` never returns these.
    reserved: HashSet<String>,
    /// Scalar f32 initializers, shared by value (Clip bounds etc.).
    scalars: HashMap<u32, String>,
}

impl GraphBuilder {
    pub fn new(graph_name: &str) -> Self {
        Self {
            graph_name: graph_name.to_string(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            inits: Vec::new(),
            nodes: Vec::new(),
            defined: HashSet::new(),
            reserved: HashSet::new(),
            scalars: HashMap::new(),
        }
    }

    /// Returns a name starting with `hint` that is not used yet, and reserves it.
    pub fn fresh(&mut self, hint: &str) -> String {
        let hint = if hint.is_empty() { "v" } else { hint };
        let mut name = hint.to_string();
        let mut n = 1usize;
        while self.reserved.contains(&name) {
            name = format!("{hint}_{n}");
            n += 1;
        }
        self.reserved.insert(name.clone());
        name
    }

    pub fn is_defined(&self, name: &str) -> bool {
        self.defined.contains(name)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn initializer_count(&self) -> usize {
        self.inits.len()
    }

    /// Number of f32 values stored in initializers.
    pub fn parameter_count(&self) -> usize {
        self.inits
            .iter()
            .filter(|i| i.dtype == DataType::Float)
            .map(|i| i.raw.len() / 4)
            .sum()
    }

    fn define(&mut self, name: &str) -> Result<(), GraphError> {
        if !self.defined.insert(name.to_string()) {
            return Err(GraphError::DuplicateName(name.to_string()));
        }
        self.reserved.insert(name.to_string());
        Ok(())
    }

    pub fn add_input(
        &mut self,
        name: &str,
        elem: DataType,
        dims: Vec<Dim>,
    ) -> Result<(), GraphError> {
        self.define(name)?;
        self.inputs.push(ValueDecl {
            name: name.to_string(),
            elem,
            dims: Some(dims),
        });
        Ok(())
    }

    /// Declares a graph output. The rank is required (onnx.checker insists on a
    /// shape for graph I/O); unknown extents can be `Dim::Unknown`.
    pub fn add_output(
        &mut self,
        name: &str,
        elem: DataType,
        dims: Vec<Dim>,
    ) -> Result<(), GraphError> {
        if self.outputs.iter().any(|o| o.name == name) {
            return Err(GraphError::DuplicateName(name.to_string()));
        }
        self.outputs.push(ValueDecl {
            name: name.to_string(),
            elem,
            dims: Some(dims),
        });
        Ok(())
    }

    fn push_init(
        &mut self,
        hint: &str,
        dtype: DataType,
        dims: &[usize],
        len: usize,
        raw: Vec<u8>,
    ) -> Result<String, GraphError> {
        let expected: usize = dims.iter().product();
        if expected != len {
            return Err(GraphError::DataLength {
                name: hint.to_string(),
                dims: dims.to_vec(),
                expected,
                actual: len,
            });
        }
        let name = self.fresh(hint);
        self.define(&name)?;
        self.inits.push(Init {
            name: name.clone(),
            dtype,
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw,
        });
        Ok(name)
    }

    /// Adds an f32 initializer (stored as little-endian `raw_data`); returns its name.
    pub fn initializer_f32(
        &mut self,
        hint: &str,
        dims: &[usize],
        data: &[f32],
    ) -> Result<String, GraphError> {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_init(hint, DataType::Float, dims, data.len(), raw)
    }

    /// Adds an int64 initializer (shapes for Reshape, sizes for Resize, axes...).
    pub fn initializer_i64(
        &mut self,
        hint: &str,
        dims: &[usize],
        data: &[i64],
    ) -> Result<String, GraphError> {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_init(hint, DataType::Int64, dims, data.len(), raw)
    }

    /// A rank-0 f32 initializer, shared between all users of the same value.
    pub fn scalar_f32(&mut self, value: f32) -> Result<String, GraphError> {
        if let Some(name) = self.scalars.get(&value.to_bits()) {
            return Ok(name.clone());
        }
        let name = self.initializer_f32("const", &[], &[value])?;
        self.scalars.insert(value.to_bits(), name.clone());
        Ok(name)
    }

    /// Adds a node. Empty input names mark omitted optional inputs.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<Attr>,
    ) -> Result<(), GraphError> {
        let node_name = outputs.first().copied().unwrap_or(op).to_string();
        for &i in inputs {
            if !i.is_empty() && !self.defined.contains(i) {
                return Err(GraphError::UndefinedInput {
                    node: node_name,
                    input: i.to_string(),
                });
            }
        }
        for &o in outputs {
            self.define(o)?;
        }
        self.nodes.push(NodeDecl {
            name: node_name,
            op: op.to_string(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attrs,
        });
        Ok(())
    }

    /// Adds a single-output node whose output gets a fresh name from `hint`.
    pub fn op1(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<Attr>,
        hint: &str,
    ) -> Result<String, GraphError> {
        let out = self.fresh(hint);
        self.node(op, inputs, &[&out], attrs)?;
        Ok(out)
    }

    /// 2-D convolution (NCHW input, OIHW weight).
    pub fn conv(
        &mut self,
        x: &str,
        weight: &str,
        bias: Option<&str>,
        p: &ConvParams,
        hint: &str,
    ) -> Result<String, GraphError> {
        let to_i64 = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
        let mut attrs = vec![
            Attr::ints("kernel_shape", &to_i64(p.kernel)),
            Attr::ints("strides", &to_i64(p.stride)),
            Attr::ints("dilations", &to_i64(p.dilation)),
            Attr::int("group", p.group as i64),
        ];
        match p.padding {
            Padding::SameUpper => attrs.push(Attr::string("auto_pad", "SAME_UPPER")),
            Padding::Explicit {
                top,
                left,
                bottom,
                right,
            } => attrs.push(Attr::ints(
                "pads",
                &[top as i64, left as i64, bottom as i64, right as i64],
            )),
            Padding::Valid => {}
        }
        let mut inputs = vec![x, weight];
        if let Some(b) = bias {
            inputs.push(b);
        }
        self.op1("Conv", &inputs, attrs, hint)
    }

    /// `Clip` with scalar min/max initializers (opset >= 11 takes them as inputs).
    pub fn clip(&mut self, x: &str, min: f32, max: f32, hint: &str) -> Result<String, GraphError> {
        let lo = self.scalar_f32(min)?;
        let hi = self.scalar_f32(max)?;
        self.op1("Clip", &[x, &lo, &hi], Vec::new(), hint)
    }

    pub fn relu6(&mut self, x: &str, hint: &str) -> Result<String, GraphError> {
        self.clip(x, 0.0, 6.0, hint)
    }

    pub fn add(&mut self, a: &str, b: &str, hint: &str) -> Result<String, GraphError> {
        self.op1("Add", &[a, b], Vec::new(), hint)
    }

    pub fn mul(&mut self, a: &str, b: &str, hint: &str) -> Result<String, GraphError> {
        self.op1("Mul", &[a, b], Vec::new(), hint)
    }

    pub fn matmul(&mut self, a: &str, b: &str, hint: &str) -> Result<String, GraphError> {
        self.op1("MatMul", &[a, b], Vec::new(), hint)
    }

    pub fn global_average_pool(&mut self, x: &str, hint: &str) -> Result<String, GraphError> {
        self.op1("GlobalAveragePool", &[x], Vec::new(), hint)
    }

    pub fn reshape(&mut self, x: &str, shape: &[i64], hint: &str) -> Result<String, GraphError> {
        let s = self.initializer_i64(&format!("{hint}_shape"), &[shape.len()], shape)?;
        self.op1("Reshape", &[x, &s], Vec::new(), hint)
    }

    pub fn transpose(&mut self, x: &str, perm: &[i64], hint: &str) -> Result<String, GraphError> {
        self.op1("Transpose", &[x], vec![Attr::ints("perm", perm)], hint)
    }

    /// Serialises the model (IR 8, opset 17).
    pub fn to_bytes(&self) -> Result<Vec<u8>, GraphError> {
        for o in &self.outputs {
            if !self.defined.contains(&o.name) {
                return Err(GraphError::UndefinedOutput(o.name.clone()));
            }
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| Node {
                name: &n.name,
                op_type: OpType::from(n.op.as_str()),
                input: n.inputs.iter().map(String::as_str).collect(),
                output: n.outputs.iter().map(String::as_str).collect(),
                attribute: n.attrs.iter().map(to_attribute).collect(),
                ..Default::default()
            })
            .collect();
        let model = Model {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetId {
                domain: "",
                version: OPSET,
            }],
            producer_name: "ovseg-engine",
            producer_version: env!("CARGO_PKG_VERSION"),
            graph: Some(Graph {
                name: &self.graph_name,
                node: nodes,
                initializer: self
                    .inits
                    .iter()
                    .map(|i| TensorProto::from_raw(&i.name, i.dims.clone(), i.dtype, &i.raw))
                    .collect(),
                input: self.inputs.iter().map(value_info).collect(),
                output: self.outputs.iter().map(value_info).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(onnx_rs::encode(&model))
    }

    pub fn write(&self, path: &Path) -> Result<(), GraphError> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| GraphError::Io {
            path: path.display().to_string(),
            error: source,
        })
    }
}

fn value_info(v: &ValueDecl) -> ValueInfo<'_> {
    ValueInfo {
        name: &v.name,
        r#type: Some(TypeProto {
            value: Some(TypeValue::Tensor(TensorTypeProto {
                elem_type: v.elem,
                shape: v.dims.as_ref().map(|dims| TensorShape {
                    dim: dims
                        .iter()
                        .map(|d| TensorShapeDimension {
                            value: match d {
                                Dim::Fixed(n) => Dimension::Value(*n),
                                Dim::Symbolic(s) => Dimension::Param(s),
                                // Neither field set means "unknown".
                                Dim::Unknown => Dimension::Param(""),
                            },
                            denotation: "",
                        })
                        .collect(),
                }),
            })),
            denotation: "",
        }),
        ..Default::default()
    }
}

fn to_attribute(a: &Attr) -> Attribute<'_> {
    let mut out = Attribute {
        name: &a.name,
        ..Default::default()
    };
    match &a.value {
        AttrValue::Int(v) => {
            out.r#type = AttributeType::Int;
            out.i = *v;
        }
        AttrValue::Ints(v) => {
            out.r#type = AttributeType::Ints;
            out.ints = v.clone();
        }
        AttrValue::Float(v) => {
            out.r#type = AttributeType::Float;
            out.f = *v;
        }
        AttrValue::Floats(v) => {
            out.r#type = AttributeType::Floats;
            out.floats = v.clone();
        }
        AttrValue::Str(s) => {
            out.r#type = AttributeType::String;
            out.s = s.as_bytes();
        }
    }
    out
}

/// A graph input or output as declared in a model file.
#[derive(Debug, Clone, PartialEq)]
pub struct IoDesc {
    pub name: String,
    /// `None` for non-tensor values (sequences, maps, ...).
    pub elem_type: Option<DataType>,
    /// `None` when the file declares no shape at all.
    pub dims: Option<Vec<Dim>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelIo {
    pub ir_version: i64,
    /// Version of the default ("" / "ai.onnx") operator set, if imported.
    pub opset: Option<i64>,
    /// Runtime inputs only: inputs that are also initializers are left out.
    pub inputs: Vec<IoDesc>,
    pub outputs: Vec<IoDesc>,
}

/// Reads the inputs/outputs (names, element types, dims incl. symbolic) of an ONNX model.
pub fn read_model_io(bytes: &[u8]) -> Result<ModelIo, GraphError> {
    let model = onnx_rs::parse(bytes).map_err(GraphError::Parse)?;
    let graph = model.graph.as_ref().ok_or(GraphError::NoGraph)?;
    let desc = |v: &ValueInfo<'_>| IoDesc {
        name: v.name.to_string(),
        elem_type: v.tensor_elem_type(),
        dims: v.tensor_shape().map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    // An absent dim_value parses as 0; ONNX has no other way to say "unknown".
                    Dimension::Value(0) => Dim::Unknown,
                    Dimension::Value(n) => Dim::Fixed(*n),
                    Dimension::Param("") => Dim::Unknown,
                    Dimension::Param(p) => Dim::Symbolic(p.to_string()),
                })
                .collect()
        }),
    };
    Ok(ModelIo {
        ir_version: model.ir_version,
        opset: model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version),
        inputs: graph.non_init_inputs().into_iter().map(desc).collect(),
        outputs: graph.output.iter().map(desc).collect(),
    })
}

pub fn read_model_io_file(path: &Path) -> Result<ModelIo, GraphError> {
    let bytes = std::fs::read(path).map_err(|source| GraphError::Io {
        path: path.display().to_string(),
        error: source,
    })?;
    read_model_io(&bytes).map_err(|e| GraphError::InFile {
        path: path.display().to_string(),
        error: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GraphBuilder {
        let mut g = GraphBuilder::new("tiny");
        g.add_input(
            "image",
            DataType::Float,
            vec![
                Dim::Fixed(1),
                Dim::Fixed(2),
                Dim::sym("height"),
                Dim::sym("width"),
            ],
        )
        .expect("input");
        let w = g
            .initializer_f32(
                "w",
                &[3, 2, 3, 3],
                &(0..54).map(|i| i as f32 * 0.5).collect::<Vec<_>>(),
            )
            .expect("w");
        let b = g.initializer_f32("b", &[3], &[1.0, -2.0, 3.5]).expect("b");
        let mut p = ConvParams::new(3);
        p.stride = [2, 2];
        p.padding = Padding::SameUpper;
        let c = g.conv("image", &w, Some(&b), &p, "conv").expect("conv");
        let r = g.relu6(&c, "act").expect("relu6");
        let r2 = g.relu6(&r, "act").expect("relu6 again");
        let s = g.add(&r, &r2, "sum").expect("add");
        let flat = g.reshape(&s, &[1, 3, -1], "flat").expect("reshape");
        g.node("Identity", &[&flat], &["out"], vec![])
            .expect("identity");
        g.add_output(
            "out",
            DataType::Float,
            vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Unknown],
        )
        .expect("output");
        g
    }

    #[test]
    fn roundtrip_through_onnx_rs() {
        let g = tiny();
        let bytes = g.to_bytes().expect("encodes");
        let model = onnx_rs::parse(&bytes).expect("parses");
        assert_eq!(model.ir_version, IR_VERSION);
        assert_eq!(model.opset_import[0].version, OPSET);
        let graph = model.graph.as_ref().expect("graph");
        let ops: Vec<String> = graph.node.iter().map(|n| n.op_type.to_string()).collect();
        assert_eq!(ops, ["Conv", "Clip", "Clip", "Add", "Reshape", "Identity"]);

        let conv = &graph.node[0];
        assert_eq!(conv.input, ["image", "w", "b"]);
        let attr = |name: &str| {
            conv.attribute
                .iter()
                .find(|a| a.name == name)
                .expect("attr")
        };
        assert_eq!(attr("strides").ints, [2, 2]);
        assert_eq!(attr("kernel_shape").ints, [3, 3]);
        assert_eq!(attr("group").i, 1);
        assert_eq!(attr("auto_pad").s, b"SAME_UPPER");
        assert_eq!(attr("auto_pad").r#type, AttributeType::String);

        // Both Clips share the same two scalar initializers.
        assert_eq!(graph.node[1].input[1..], graph.node[2].input[1..]);
        let lo = graph.get_initializer(graph.node[1].input[1]).expect("min");
        let hi = graph.get_initializer(graph.node[1].input[2]).expect("max");
        assert!(lo.dims().is_empty());
        assert_eq!(*lo.as_f32().expect("f32"), [0.0]);
        assert_eq!(*hi.as_f32().expect("f32"), [6.0]);

        let w = graph.get_initializer("w").expect("w");
        assert_eq!(w.dims(), [3, 2, 3, 3]);
        assert_eq!(w.as_f32().expect("f32")[53], 26.5);
        let shape = graph
            .get_initializer(graph.node[4].input[1])
            .expect("shape");
        assert_eq!(*shape.as_i64().expect("i64"), [1, 3, -1]);
        // Fresh names never collide.
        assert_eq!(graph.node[1].output[0], "act");
        assert_eq!(graph.node[2].output[0], "act_1");
        assert_eq!(g.parameter_count(), 54 + 3 + 2);
    }

    #[test]
    fn reads_model_io() {
        let bytes = tiny().to_bytes().expect("encodes");
        let io = read_model_io(&bytes).expect("io");
        assert_eq!(io.opset, Some(OPSET));
        assert_eq!(io.inputs.len(), 1, "initializers are not runtime inputs");
        assert_eq!(io.inputs[0].name, "image");
        assert_eq!(io.inputs[0].elem_type, Some(DataType::Float));
        assert_eq!(
            io.inputs[0].dims,
            Some(vec![
                Dim::Fixed(1),
                Dim::Fixed(2),
                Dim::sym("height"),
                Dim::sym("width")
            ])
        );
        assert_eq!(io.outputs[0].name, "out");
        assert_eq!(
            io.outputs[0].dims,
            Some(vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Unknown])
        );
    }

    #[test]
    fn rejects_bad_graphs() {
        let mut g = GraphBuilder::new("bad");
        g.add_input("x", DataType::Float, vec![Dim::Fixed(1)])
            .expect("input");
        assert!(matches!(
            g.node("Relu", &["nope"], &["y"], vec![]),
            Err(GraphError::UndefinedInput { .. })
        ));
        g.node("Relu", &["x"], &["y"], vec![]).expect("relu");
        assert!(matches!(
            g.node("Relu", &["x"], &["y"], vec![]),
            Err(GraphError::DuplicateName(_))
        ));
        assert!(matches!(
            g.initializer_f32("w", &[2, 2], &[1.0]),
            Err(GraphError::DataLength {
                expected: 4,
                actual: 1,
                ..
            })
        ));
        g.add_output("z", DataType::Float, vec![Dim::Unknown])
            .expect("declare");
        assert!(matches!(g.to_bytes(), Err(GraphError::UndefinedOutput(_))));
        // A fresh name skips everything already defined.
        assert_eq!(g.fresh("y"), "y_1");
    }

    #[test]
    fn read_model_io_file_names_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("garbage.onnx");
        // Field 7 (graph) with a length running past the end.
        std::fs::write(&p, [0x3a, 0x7f, 0x00]).expect("write");
        let err = read_model_io_file(&p).expect_err("must fail");
        assert!(err.to_string().contains("garbage.onnx"), "{err}");
    }
}
