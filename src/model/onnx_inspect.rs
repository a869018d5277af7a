//! What an ONNX graph offers a detector, before loading it as a model:
//! its inputs and outputs, its last linear layer and the nodes a feature
//! detector can read, with their shapes (`oodkit inspect`).

use std::fmt;
use std::path::Path;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::onnx::{folder_of, missing_external_data, read_proto};
use super::onnx_head::last_layer_input;
use crate::error::{Error, Result};

/// One node of a graph: its name, operator and first output's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNode {
    /// The node's name (what `--layer` takes, as does its output's name).
    pub name: String,
    /// The name of its first output value.
    pub output: String,
    /// The operator, e.g. `Gemm`.
    pub op: String,
    /// The first output's shape, symbolic dimensions by name (e.g.
    /// `batch,64`).
    pub shape: String,
}

/// A graph's inputs, outputs, last linear layer and feature candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSummary {
    /// Each input: name and shape.
    pub inputs: Vec<(String, String)>,
    /// Each output: name and shape (the first is the logits).
    pub outputs: Vec<(String, String)>,
    /// The last linear layer: its node and the value it reads (the default
    /// feature layer), or why there is none.
    pub last_layer: std::result::Result<(String, String), String>,
    /// The nodes before the logits, in the graph's order, with their
    /// shapes: the layers a feature detector can read (the last ones are
    /// the usual choice).
    pub nodes: Vec<GraphNode>,
}

impl GraphSummary {
    /// Reads the graph at `path` and infers every node's shape (the
    /// weights, external data included, are read as for running it).
    pub fn of(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let unreadable =
            |e: TractError| Error::corrupt(path, None, format!("not a readable ONNX graph: {e:#}"));
        // The checks loading makes of the file and its external data,
        // without optimising the graph for running.
        let proto = read_proto(path)?;
        let dir = folder_of(path);
        missing_external_data(&proto, dir, path)?;
        let onnx = tract_onnx::onnx();
        // The graph's own nodes (before tract splits them for running),
        // their shapes inferred.
        let mut typed = onnx.parse(&proto, dir.to_str()).map_err(unreadable)?.model;
        typed.analyse(false).map_err(|e| {
            Error::backend_with(
                format!("ONNX ({}): inferring its shapes", path.display()),
                e,
            )
        })?;
        let shape_of = |outlet: OutletId| -> String {
            typed
                .outlet_fact(outlet)
                .map(|f| {
                    let dims: Vec<String> = f
                        .shape
                        .dims()
                        .map(|d| match d.concretize() {
                            Some(d) => d.to_string(),
                            None => "?".into(),
                        })
                        .collect();
                    dims.join(",")
                })
                .unwrap_or_else(|_| "?".into())
        };
        let label = |outlet: OutletId| -> String {
            typed
                .outlet_label(outlet)
                .map(str::to_owned)
                .unwrap_or_else(|| typed.node(outlet.node).name.clone())
        };
        let inputs: Vec<(String, String)> = typed
            .input_outlets()
            .map_err(unreadable)?
            .iter()
            .map(|&o| (label(o), shape_of(o)))
            .collect();
        // As loading does: the graph takes image batches.
        if let Some((name, shape)) = inputs.first()
            && shape.split(',').count() != 4
        {
            return Err(Error::Unsupported {
                what: format!("an ONNX input {name} of shape ({shape})"),
                hint: "OnnxModel takes image batches (N, C, H, W)".into(),
            });
        }
        let outputs: Vec<(String, String)> = typed
            .output_outlets()
            .map_err(unreadable)?
            .iter()
            .map(|&o| (label(o), shape_of(o)))
            .collect();
        let graph = proto.graph.as_ref();
        let last_layer = match (graph, graph.and_then(|g| g.output.first())) {
            (Some(graph), Some(logits)) => {
                last_layer_input(graph, &logits.name).map(|(input, node)| (node, input))
            }
            _ => Err("the graph declares no output".into()),
        };
        let inputs_of_graph: Vec<usize> = typed
            .input_outlets()
            .map_err(unreadable)?
            .iter()
            .map(|o| o.node)
            .collect();
        let nodes = typed
            .eval_order()
            .map_err(unreadable)?
            .into_iter()
            .filter(|&n| !inputs_of_graph.contains(&n))
            .map(|n| typed.node(n))
            .filter(|node| node.op.name() != "Const")
            .map(|node| {
                let outlet = OutletId::new(node.id, 0);
                GraphNode {
                    name: node.name.clone(),
                    output: label(outlet),
                    op: node.op.name().to_string(),
                    shape: shape_of(outlet),
                }
            })
            .collect();
        Ok(GraphSummary {
            inputs,
            outputs,
            last_layer,
            nodes,
        })
    }
}

impl fmt::Display for GraphSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, shape) in &self.inputs {
            writeln!(f, "input   {name:<32} {shape}")?;
        }
        for (i, (name, shape)) in self.outputs.iter().enumerate() {
            let role = if i == 0 { " (the logits)" } else { "" };
            writeln!(f, "output  {name:<32} {shape}{role}")?;
        }
        match &self.last_layer {
            Ok((node, input)) => writeln!(
                f,
                "last linear layer: node {node:?}, reading {input:?} (the default --layer)"
            )?,
            Err(reason) => writeln!(f, "last linear layer: none found ({reason})")?,
        }
        writeln!(
            f,
            "nodes a feature detector can read (--layer NODE or OUTPUT), last 12:"
        )?;
        let skip = self.nodes.len().saturating_sub(12);
        for node in &self.nodes[skip..] {
            writeln!(
                f,
                "  {:<28} {:<28} {:<14} {}",
                node.name, node.output, node.op, node.shape
            )?;
        }
        Ok(())
    }
}
