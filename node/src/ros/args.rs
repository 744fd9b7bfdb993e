//! ROS 2 command-line (`--ros-args`) and environment conventions.
//!
//! The node speaks DDS directly through `ros2-client`; there is no rcl underneath,
//! so the parts of rcl that launch files and users rely on are re-implemented here:
//! argument splitting, remapping, parameter overrides (`-p`, `--params-file`),
//! name expansion and the `ROS_DOMAIN_ID` / discovery-range environment.
//! Where rcl's behaviour is surprising we keep it and say so.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use ros2_client::ParameterValue;
use serde_yaml_ng::{Mapping, Value};

/// Everything that can go wrong; each variant carries the offending text.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("--ros-args: unknown ROS argument \"{0}\"")]
    UnknownFlag(String),
    #[error("--ros-args: {0} expects a value, got nothing")]
    MissingValue(String),
    #[error("--ros-args: {flag} expects {shape}, got \"{text}\"")]
    Malformed { flag: String, shape: &'static str, text: String },
    #[error("--ros-args: {flag} \"{text}\": {reason}")]
    InvalidValue { flag: String, text: String, reason: String },
    #[error("--ros-args: argument is not valid UTF-8: \"{0}\"")]
    NotUtf8(String),
    #[error("invalid {kind} \"{name}\": {reason}")]
    InvalidName { kind: &'static str, name: String, reason: String },
    // `error`, not `source`: the message carries it, so it is not chained a second time.
    #[error("cannot read parameters file {}: {error}", path.display())]
    ParamsFileRead { path: PathBuf, error: std::io::Error },
    #[error("parameters file {}: {error}", path.display())]
    ParamsFileYaml { path: PathBuf, error: serde_yaml_ng::Error },
    #[error("parameters file {}: {key}: {reason}", path.display())]
    ParamsFile { path: PathBuf, key: String, reason: String },
    #[error("environment variable {var}=\"{value}\" is invalid: expected {expected}")]
    Env { var: &'static str, value: String, expected: &'static str },
}

/// A name remapping rule `[node:]from:=to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remap {
    /// Only applies to the node with this name (`talker:chatter:=x`), if set.
    pub node: Option<String>,
    pub from: String,
    pub to: String,
}

/// The ROS arguments found between `--ros-args` and `--`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RosArgs {
    /// `-r __node:=name` (or the deprecated `__name`). As in rcl the first one wins.
    pub node_name: Option<String>,
    /// `-r __ns:=/ns`, always absolute. As in rcl the first one wins.
    pub namespace: Option<String>,
    /// Topic remaps in command-line order (rcl applies the first match).
    /// Node-targeted rules for another node are dropped once `__node` is known;
    /// otherwise [`resolve_topic`] filters them by the node it is given.
    pub remaps: Vec<Remap>,
    /// `-p name:=value`, later duplicates replace earlier ones.
    pub params: Vec<(String, ParameterValue)>,
    pub params_files: Vec<PathBuf>,
    /// `--log-level level`: default level, lower-cased; last one wins.
    pub log_level: Option<String>,
    /// `--log-level logger:=level`, in order.
    pub logger_levels: Vec<(String, String)>,
    /// `-e/--enclave`: accepted so launch files work, but unused (no SROS2 security).
    pub enclave: Option<String>,
    pub disable_rosout_logs: bool,
    pub disable_stdout_logs: bool,
    pub disable_external_lib_logs: bool,
}

const LOG_LEVELS: [&str; 6] = ["debug", "info", "warn", "error", "fatal", "unset"];

/// Splits `argv` into the program's own arguments (in order, for clap) and the
/// ROS arguments. Sections start at `--ros-args` and end at `--` or the end; the
/// markers themselves are removed.
pub fn split_ros_args(argv: impl IntoIterator<Item = OsString>) -> Result<(Vec<OsString>, RosArgs), ArgsError> {
    let mut rest = Vec::new();
    let mut ros = RosArgs::default();
    let mut it = argv.into_iter();
    let mut in_section = false;
    while let Some(arg) = it.next() {
        if arg == "--ros-args" {
            in_section = true;
        } else if !in_section {
            rest.push(arg);
        } else if arg == "--" {
            in_section = false;
        } else {
            let flag = utf8(arg)?;
            let mut value = || it.next().ok_or_else(|| ArgsError::MissingValue(flag.clone())).and_then(utf8);
            match flag.as_str() {
                "-r" | "--remap" => ros.add_remap(&flag, &value()?)?,
                "-p" | "--param" => ros.add_param(&flag, &value()?)?,
                "--params-file" => ros.params_files.push(PathBuf::from(value()?)),
                "--log-level" => ros.add_log_level(&flag, &value()?)?,
                "-e" | "--enclave" => ros.enclave = Some(value()?),
                "--disable-rosout-logs" => ros.disable_rosout_logs = true,
                "--enable-rosout-logs" => ros.disable_rosout_logs = false,
                "--disable-stdout-logs" => ros.disable_stdout_logs = true,
                "--enable-stdout-logs" => ros.disable_stdout_logs = false,
                "--disable-external-lib-logs" => ros.disable_external_lib_logs = true,
                "--enable-external-lib-logs" => ros.disable_external_lib_logs = false,
                _ => return Err(ArgsError::UnknownFlag(flag)),
            }
        }
    }
    // rcl matches node-targeted topic rules against the node's final name.
    if let Some(node) = &ros.node_name {
        ros.remaps.retain(|r| r.node.as_ref().is_none_or(|n| n == node));
    }
    Ok((rest, ros))
}

fn utf8(arg: OsString) -> Result<String, ArgsError> {
    arg.into_string().map_err(|a| ArgsError::NotUtf8(a.to_string_lossy().into_owned()))
}

/// Splits `lhs:=rhs`; `lhs` must be non-empty.
fn split_rule<'a>(flag: &str, text: &'a str, shape: &'static str) -> Result<(&'a str, &'a str), ArgsError> {
    match text.split_once(":=") {
        Some((lhs, rhs)) if !lhs.is_empty() => Ok((lhs, rhs)),
        _ => Err(ArgsError::Malformed { flag: flag.into(), shape, text: text.into() }),
    }
}

impl RosArgs {
    fn add_remap(&mut self, flag: &str, text: &str) -> Result<(), ArgsError> {
        let (lhs, to) = split_rule(flag, text, "from:=to")?;
        // `node:from`, but `rostopic://from` is a scheme, not a node prefix.
        let (node, from) = match lhs.find(':') {
            Some(i) if !lhs[i..].starts_with("://") => (Some(&lhs[..i]), &lhs[i + 1..]),
            _ => (None, lhs),
        };
        if let Some(node) = node {
            validate_node_name(node)?;
        }
        let invalid = |reason: &str| ArgsError::InvalidValue { flag: flag.into(), text: text.into(), reason: reason.into() };
        match from {
            "__node" | "__name" | "__ns" if node.is_some() => Err(invalid("node-targeted __node/__ns remaps are not supported")),
            "__node" | "__name" => {
                validate_node_name(to)?;
                self.node_name.get_or_insert_with(|| to.to_string());
                Ok(())
            }
            "__ns" => {
                validate_namespace(to)?;
                self.namespace.get_or_insert_with(|| to.to_string());
                Ok(())
            }
            _ => {
                if from.starts_with("rosservice://") {
                    return Err(invalid("service remapping is not supported"));
                }
                let from = from.strip_prefix("rostopic://").unwrap_or(from);
                validate_topic(from)?;
                validate_topic(to)?;
                let node = node.map(str::to_string);
                self.remaps.push(Remap { node, from: from.into(), to: to.into() });
                Ok(())
            }
        }
    }

    fn add_param(&mut self, flag: &str, text: &str) -> Result<(), ArgsError> {
        let (name, value) = split_rule(flag, text, "name:=value")?;
        let invalid = |reason: String| ArgsError::InvalidValue { flag: flag.into(), text: text.into(), reason };
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(invalid(format!(
                "parameter name \"{name}\" may only contain letters, digits, '_' and '.' (node-targeted -p is not supported)"
            )));
        }
        let value = parse_param_value(value).map_err(invalid)?;
        merge(&mut self.params, name.to_string(), value);
        Ok(())
    }

    fn add_log_level(&mut self, flag: &str, text: &str) -> Result<(), ArgsError> {
        let (logger, level) = match text.split_once(":=") {
            Some((logger, level)) => (Some(logger), level),
            None => (None, text),
        };
        let level = level.to_ascii_lowercase();
        if !LOG_LEVELS.contains(&level.as_str()) || logger == Some("") {
            return Err(ArgsError::InvalidValue {
                flag: flag.into(),
                text: text.into(),
                reason: "expected [logger:=]level with level one of debug, info, warn, error, fatal, unset".into(),
            });
        }
        match logger {
            Some(logger) => self.logger_levels.push((logger.to_string(), level)),
            None => self.log_level = Some(level),
        }
        Ok(())
    }

    /// Parameter overrides for the node `node_fqn`: the params files in order,
    /// then the `-p` values, later sources replacing earlier ones. (rcl applies
    /// `-p` and `--params-file` in command-line order; we let `-p` always win,
    /// which is what people expect when adding `-p` to a launch command.)
    pub fn parameter_overrides(&self, node_fqn: &str) -> Result<Vec<(String, ParameterValue)>, ArgsError> {
        let mut out = Vec::new();
        for file in &self.params_files {
            for (name, value) in load_params_file(file, node_fqn)? {
                merge(&mut out, name, value);
            }
        }
        for (name, value) in &self.params {
            merge(&mut out, name.clone(), value.clone());
        }
        Ok(out)
    }
}

/// What `--log-level` asks of the log: levels as tracing names ("fatal" is "error"; "unset"
/// leaves the level to `-v` and the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogLevels {
    /// `--log-level LEVEL`: every target.
    pub default: Option<&'static str>,
    /// `--log-level NODE:=LEVEL`: the node's own code.
    pub node: Option<&'static str>,
    /// `logger:=level` rules naming loggers this node does not have (`rcl`, `rmw_*`, ...).
    pub ignored: Vec<String>,
}

/// tracing targets of the node's own code, which its ROS logger stands for.
pub const NODE_LOG_TARGETS: [&str; 3] = ["ovseg", "engine", "calibration"];

impl LogLevels {
    /// The tracing filter directives, given the global level to use when `--log-level`
    /// sets none (from `-v`, or the default).
    pub fn directives(&self, fallback: &str) -> String {
        let mut out = self.default.unwrap_or(fallback).to_string();
        if let Some(level) = self.node {
            for target in NODE_LOG_TARGETS {
                out.push_str(&format!(",{target}={level}"));
            }
        }
        out
    }
}

/// A ROS log level as a tracing level; None for "unset".
fn tracing_level(level: &str) -> Option<&'static str> {
    match level {
        "debug" => Some("debug"),
        "info" => Some("info"),
        "warn" => Some("warn"),
        "error" | "fatal" => Some("error"),
        _ => None,
    }
}

impl RosArgs {
    /// The levels `--log-level` sets for the node called `default_node` unless remapped.
    /// A named rule applies when it names the node's logger, as rclcpp spells it (`segmenter`,
    /// or `robot.segmenter` in namespace `/robot`); the plain node name is accepted in a
    /// namespace too. Rules for other loggers are returned in `ignored`.
    pub fn log_levels(&self, default_node: &str) -> LogLevels {
        let node = self.node_name.as_deref().unwrap_or(default_node);
        let ns = self.namespace.as_deref().unwrap_or("/").trim_matches('/').replace('/', ".");
        let qualified = if ns.is_empty() { node.to_string() } else { format!("{ns}.{node}") };
        let mut levels = LogLevels { default: self.log_level.as_deref().and_then(tracing_level), ..Default::default() };
        for (logger, level) in &self.logger_levels {
            if logger == node || *logger == qualified {
                // Later rules win, and "unset" clears an earlier one, as in rcutils.
                levels.node = tracing_level(level);
            } else if !levels.ignored.contains(logger) {
                levels.ignored.push(logger.clone());
            }
        }
        levels
    }
}

/// Replaces an existing entry in place (keeping first-seen order) or appends.
fn merge(out: &mut Vec<(String, ParameterValue)>, name: String, value: ParameterValue) {
    match out.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => out.push((name, value)),
    }
}

/// Parses a `-p` value as YAML like rcl: `true`, `3`, `0.5`, `hello`, `[1, 2]`.
/// YAML 1.2 rules apply, so `yes`/`on` are strings (rcl would read them as bools).
fn parse_param_value(text: &str) -> Result<ParameterValue, String> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not a valid YAML value: {e}"))?;
    yaml_to_param(&value)
}

/// Converts one YAML value. Sequences must be homogeneous, except that integers
/// mixed with floats become a double array. `[]` carries no element type; we
/// return an empty string array (rcl has no better answer either).
fn yaml_to_param(value: &Value) -> Result<ParameterValue, String> {
    use ParameterValue as P;
    match value {
        Value::Bool(b) => Ok(P::Boolean(*b)),
        Value::Number(n) if n.is_f64() => n.as_f64().map(P::Double).ok_or_else(|| format!("bad number {n}")),
        Value::Number(n) => n.as_i64().map(P::Integer).ok_or_else(|| format!("integer {n} does not fit in 64 bits")),
        Value::String(s) => Ok(P::String(s.clone())),
        Value::Null => Err("empty/null values are not supported (quote \"\" for an empty string)".into()),
        Value::Mapping(_) => Err("a mapping is not a parameter value".into()),
        Value::Tagged(_) => Err("tagged YAML values are not supported".into()),
        Value::Sequence(items) => {
            let elems = items
                .iter()
                .map(|v| match v {
                    Value::Sequence(_) | Value::Mapping(_) => Err("nested sequences/mappings are not supported".to_string()),
                    v => yaml_to_param(v),
                })
                .collect::<Result<Vec<_>, _>>()?;
            fn all<T>(elems: &[P], f: impl Fn(&P) -> Option<T>) -> Option<Vec<T>> {
                elems.iter().map(f).collect()
            }
            if elems.is_empty() {
                Ok(P::StringArray(Vec::new()))
            } else if let Some(v) = all(&elems, |e| if let P::Boolean(b) = e { Some(*b) } else { None }) {
                Ok(P::BooleanArray(v))
            } else if let Some(v) = all(&elems, |e| if let P::Integer(i) = e { Some(*i) } else { None }) {
                Ok(P::IntegerArray(v))
            } else if let Some(v) = all(&elems, |e| match e {
                P::Integer(i) => Some(*i as f64),
                P::Double(d) => Some(*d),
                _ => None,
            }) {
                Ok(P::DoubleArray(v))
            } else if let Some(v) = all(&elems, |e| if let P::String(s) = e { Some(s.clone()) } else { None }) {
                Ok(P::StringArray(v))
            } else {
                Err("sequence mixes element types (only integers with floats may mix)".into())
            }
        }
    }
}

/// Reads a standard ROS 2 parameters file and returns the parameters that apply
/// to `node_fqn` (e.g. `/ns/node`).
///
/// Top-level keys select nodes: `/**`, `/ns/node`, `/**/node`, `/ns/*` (`*` is one
/// name token, `**` any number). A selector without a leading `/` is taken as
/// absolute, so `node:` matches only `/node` — this is rclcpp's behaviour.
/// Selectors may also be nested (`ns: {node: {ros__parameters: ...}}`). Nested
/// parameter mappings flatten to dotted names. All matching selectors are merged
/// in file order, so a later `/**` overrides an earlier `/ns/node` for the same
/// name (rclcpp: file order wins, not specificity). Entries for other nodes are
/// still type-checked, so a file fails the same way for every node.
pub fn load_params_file(path: &Path, node_fqn: &str) -> Result<Vec<(String, ParameterValue)>, ArgsError> {
    let text = std::fs::read_to_string(path).map_err(|error| ArgsError::ParamsFileRead { path: path.to_path_buf(), error })?;
    let doc: Value = serde_yaml_ng::from_str(&text).map_err(|error| ArgsError::ParamsFileYaml { path: path.to_path_buf(), error })?;
    let mut out = Vec::new();
    match &doc {
        Value::Null => {}
        Value::Mapping(map) => walk_selectors(path, "", map, node_fqn, &mut out)?,
        _ => {
            return Err(file_err(path, "(top level)", "expected a mapping of node names"));
        }
    }
    Ok(out)
}

fn file_err(path: &Path, key: &str, reason: impl Into<String>) -> ArgsError {
    ArgsError::ParamsFile { path: path.to_path_buf(), key: key.into(), reason: reason.into() }
}

fn key_str<'a>(path: &Path, parent: &str, key: &'a Value) -> Result<&'a str, ArgsError> {
    key.as_str().ok_or_else(|| file_err(path, parent, format!("key {key:?} is not a string")))
}

/// Walks node-selector mappings down to `ros__parameters`.
fn walk_selectors(
    path: &Path,
    selector: &str,
    map: &Mapping,
    node_fqn: &str,
    out: &mut Vec<(String, ParameterValue)>,
) -> Result<(), ArgsError> {
    for (key, value) in map {
        let key = key_str(path, selector, key)?;
        if key == "ros__parameters" {
            if selector.is_empty() {
                return Err(file_err(path, key, "must be nested under a node name"));
            }
            let yaml_path = format!("{selector}.ros__parameters");
            let mut params = Vec::new();
            match value {
                Value::Mapping(m) => flatten(path, &yaml_path, "", m, &mut params)?,
                Value::Null => {}
                _ => {
                    return Err(file_err(path, &yaml_path, "expected a mapping of parameters"));
                }
            }
            if selector_matches(selector, node_fqn) {
                for (name, value) in params {
                    merge(out, name, value);
                }
            }
        } else {
            let child = if selector.is_empty() {
                key.to_string()
            } else {
                format!("{}/{}", selector.trim_end_matches('/'), key.trim_start_matches('/'))
            };
            match value {
                // Report the outermost key lacking it, e.g. a `ros_parameters:` typo.
                Value::Mapping(m) if has_ros_parameters(value) => walk_selectors(path, &child, m, node_fqn, out)?,
                _ => return Err(file_err(path, &child, "missing ros__parameters")),
            }
        }
    }
    Ok(())
}

fn has_ros_parameters(value: &Value) -> bool {
    match value {
        Value::Mapping(m) => m.iter().any(|(k, v)| k.as_str() == Some("ros__parameters") || has_ros_parameters(v)),
        _ => false,
    }
}

fn flatten(path: &Path, yaml_path: &str, prefix: &str, map: &Mapping, out: &mut Vec<(String, ParameterValue)>) -> Result<(), ArgsError> {
    for (key, value) in map {
        let key = key_str(path, yaml_path, key)?;
        let name = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
        match value {
            Value::Mapping(m) => flatten(path, yaml_path, &name, m, out)?,
            v => {
                let value = yaml_to_param(v).map_err(|reason| file_err(path, &format!("{yaml_path}.{name}"), reason))?;
                merge(out, name, value);
            }
        }
    }
    Ok(())
}

/// rcl selector matching: tokens compared literally, `*` = one token, `**` = any number.
fn selector_matches(selector: &str, node_fqn: &str) -> bool {
    fn glob(pat: &[&str], name: &[&str]) -> bool {
        match pat.split_first() {
            None => name.is_empty(),
            Some((&"**", rest)) => (0..=name.len()).any(|i| glob(rest, &name[i..])),
            Some((&"*", rest)) => !name.is_empty() && glob(rest, &name[1..]),
            Some((tok, rest)) => name.first() == Some(tok) && glob(rest, &name[1..]),
        }
    }
    let pat: Vec<&str> = selector.trim_start_matches('/').split('/').collect();
    let name: Vec<&str> = node_fqn.trim_start_matches('/').split('/').collect();
    glob(&pat, &name)
}

/// `/ns/node`, or `/node` in the root namespace. An empty or relative namespace
/// is treated as absolute, like rclcpp does.
pub fn fully_qualified_node_name(namespace: &str, node: &str) -> String {
    let ns = namespace.trim_end_matches('/');
    if ns.is_empty() || ns.starts_with('/') { format!("{ns}/{node}") } else { format!("/{ns}/{node}") }
}

/// Resolves a topic name as rcl does: expand (`~` = `/ns/node`, relative names
/// get the namespace), then apply the first remap rule whose expanded `from`
/// equals the expanded name; its `to` is expanded the same way. Node-targeted
/// rules only apply to `node`. Brace substitutions (`{node}`) are not supported.
pub fn resolve_topic(name: &str, namespace: &str, node: &str, remaps: &[Remap]) -> Result<String, ArgsError> {
    let ns = if namespace.starts_with('/') { namespace.to_string() } else { format!("/{namespace}") };
    validate_namespace(&ns)?;
    validate_node_name(node)?;
    validate_topic(name)?;
    let full = expand(name, &ns, node);
    for rule in remaps {
        if rule.node.as_deref().is_some_and(|n| n != node) {
            continue;
        }
        validate_topic(&rule.from)?;
        if expand(&rule.from, &ns, node) == full {
            validate_topic(&rule.to)?;
            return Ok(expand(&rule.to, &ns, node));
        }
    }
    Ok(full)
}

/// Expands an already validated name against a validated absolute namespace.
fn expand(name: &str, ns: &str, node: &str) -> String {
    if name == "~" {
        fully_qualified_node_name(ns, node)
    } else if let Some(rest) = name.strip_prefix("~/") {
        format!("{}/{rest}", fully_qualified_node_name(ns, node))
    } else if name.starts_with('/') {
        name.to_string()
    } else {
        format!("{}/{name}", ns.trim_end_matches('/'))
    }
}

/// Checks the `a/b/c` part of a name: tokens of `[A-Za-z0-9_]` not starting with a digit.
fn check_tokens(body: &str) -> Result<(), String> {
    if body.is_empty() || body.ends_with('/') {
        return Err("ends with '/'".into());
    }
    for tok in body.split('/') {
        if tok.is_empty() {
            return Err("contains '//'".into());
        }
        if let Some(c) = tok.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
            return Err(format!("contains '{c}' (only letters, digits, '_' and '/' are allowed)"));
        }
        if tok.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("token \"{tok}\" starts with a digit"));
        }
    }
    Ok(())
}

fn invalid_name(kind: &'static str, name: &str, reason: impl Into<String>) -> ArgsError {
    ArgsError::InvalidName { kind, name: name.into(), reason: reason.into() }
}

fn validate_topic(name: &str) -> Result<(), ArgsError> {
    let body = if name.is_empty() {
        return Err(invalid_name("topic name", name, "is empty"));
    } else if name == "~" {
        return Ok(());
    } else if let Some(rest) = name.strip_prefix("~/") {
        rest
    } else if name.starts_with('~') {
        return Err(invalid_name("topic name", name, "'~' must be followed by '/'"));
    } else {
        name.strip_prefix('/').unwrap_or(name)
    };
    check_tokens(body).map_err(|reason| invalid_name("topic name", name, reason))
}

fn validate_namespace(ns: &str) -> Result<(), ArgsError> {
    match ns.strip_prefix('/') {
        None => Err(invalid_name("namespace", ns, "must start with '/'")),
        Some("") => Ok(()),
        Some(body) => check_tokens(body).map_err(|reason| invalid_name("namespace", ns, reason)),
    }
}

fn validate_node_name(node: &str) -> Result<(), ArgsError> {
    if node.is_empty() || node.contains('/') {
        return Err(invalid_name("node name", node, "must be a single non-empty token"));
    }
    check_tokens(node).map_err(|reason| invalid_name("node name", node, reason))
}

/// DDS settings from the ROS 2 environment variables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DdsEnv {
    pub domain_id: u16,
    /// Restrict discovery to the loopback interface.
    pub localhost_only: bool,
}

/// Reads `ROS_DOMAIN_ID`, `ROS_LOCALHOST_ONLY`, `ROS_AUTOMATIC_DISCOVERY_RANGE` and
/// `ROS_STATIC_PEERS` as rcl (Jazzy) does, and returns the settings with warnings for the
/// log. Empty values count as unset; the range is case-insensitive.
///
/// Domain ids 0..=232 are accepted, the range for which the RTPS port formula
/// stays below 65535; on Linux only 0-101 and 215-232 avoid the ephemeral ports.
/// `ROS_LOCALHOST_ONLY=1` is deprecated but, as in rcl, wins: discovery stays on loopback
/// and the range and static peers are ignored. `ROS_AUTOMATIC_DISCOVERY_RANGE=OFF` becomes
/// loopback-only discovery, since the DDS stack cannot switch discovery off entirely (other
/// processes on the host can still connect). The DDS stack has no static peers, so
/// `ROS_STATIC_PEERS` is ignored with a warning.
pub fn dds_env_from(vars: impl Fn(&str) -> Option<String>) -> Result<(DdsEnv, Vec<String>), ArgsError> {
    let get = |name: &str| vars(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let domain_id = match get("ROS_DOMAIN_ID") {
        None => 0,
        Some(v) => v.parse::<u16>().ok().filter(|d| *d <= 232).ok_or(ArgsError::Env {
            var: "ROS_DOMAIN_ID",
            value: v,
            expected: "an integer from 0 to 232",
        })?,
    };
    let range = get("ROS_AUTOMATIC_DISCOVERY_RANGE");
    let peers = get("ROS_STATIC_PEERS");
    let mut warnings = Vec::new();
    if get("ROS_LOCALHOST_ONLY").is_some_and(|v| v == "1") {
        let ignored: Vec<String> = [("ROS_AUTOMATIC_DISCOVERY_RANGE", &range), ("ROS_STATIC_PEERS", &peers)]
            .into_iter()
            .filter_map(|(var, value)| value.as_ref().map(|v| format!("{var}=\"{v}\"")))
            .collect();
        let ignored = match ignored.len() {
            0 => String::new(),
            1 => format!("; it overrides {}, which is ignored", ignored[0]),
            _ => format!("; it overrides {}, which are ignored", ignored.join(" and ")),
        };
        warnings.push(format!(
            "ROS_LOCALHOST_ONLY=1 is deprecated but still honoured: discovery stays on loopback{ignored} \
             (use ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST instead)"
        ));
        return Ok((DdsEnv { domain_id, localhost_only: true }, warnings));
    }
    let localhost_only = match range {
        None => false,
        Some(v) => match v.to_ascii_uppercase().as_str() {
            "LOCALHOST" => true,
            "OFF" => {
                warnings.push(
                    "ROS_AUTOMATIC_DISCOVERY_RANGE=OFF: discovery cannot be switched off here, so it is limited to loopback \
                     (processes on this host can still connect)"
                        .to_string(),
                );
                true
            }
            "SUBNET" | "SYSTEM_DEFAULT" => false,
            _ => {
                return Err(ArgsError::Env {
                    var: "ROS_AUTOMATIC_DISCOVERY_RANGE",
                    value: v,
                    expected: "one of LOCALHOST, SUBNET, OFF, SYSTEM_DEFAULT",
                });
            }
        },
    };
    if let Some(peers) = peers {
        warnings.push(format!("ROS_STATIC_PEERS=\"{peers}\" is ignored: static peers are not supported, only multicast discovery"));
    }
    Ok((DdsEnv { domain_id, localhost_only }, warnings))
}

/// [`dds_env_from`] on the process environment; the warnings go to the log.
pub fn dds_env() -> Result<DdsEnv, ArgsError> {
    let (env, warnings) = dds_env_from(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ParameterValue as P;
    use std::io::Write;

    /// Splits a whitespace-separated command line.
    fn split(line: &str) -> Result<(Vec<String>, RosArgs), ArgsError> {
        let (rest, ros) = split_ros_args(line.split_whitespace().map(OsString::from))?;
        Ok((rest.into_iter().map(|a| a.into_string().unwrap()).collect(), ros))
    }

    fn err(line: &str) -> String {
        split(line).unwrap_err().to_string()
    }

    fn param(text: &str) -> ParameterValue {
        let (_, ros) = split_ros_args(["prog", "--ros-args", "-p", text].map(OsString::from)).unwrap();
        ros.params[0].1.clone()
    }

    fn yaml_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn splits_sections_and_keeps_program_args_in_order() {
        let (rest, ros) = split("prog --model m --ros-args -r a:=b -- --x --ros-args --params-file p.yaml").unwrap();
        assert_eq!(rest, ["prog", "--model", "m", "--x"]);
        assert_eq!(ros.remaps, [Remap { node: None, from: "a".into(), to: "b".into() }]);
        assert_eq!(ros.params_files, [PathBuf::from("p.yaml")]);
        let (rest, ros) = split("prog -v").unwrap();
        assert_eq!((rest, ros), (vec!["prog".to_string(), "-v".into()], RosArgs::default()));
    }

    #[test]
    fn special_remaps_first_wins_and_targets_filter() {
        let (_, ros) = split(
            "p --ros-args -r __node:=seg --remap __name:=other -r __ns:=/robot -r seg:in:=cam -r talker:in:=nope -r rostopic://out:=/o",
        )
        .unwrap();
        assert_eq!(ros.node_name.as_deref(), Some("seg"));
        assert_eq!(ros.namespace.as_deref(), Some("/robot"));
        let rules: Vec<_> = ros.remaps.iter().map(|r| (r.node.as_deref(), r.from.as_str(), r.to.as_str())).collect();
        assert_eq!(rules, [(Some("seg"), "in", "cam"), (None, "out", "/o")]);
        assert!(err("p --ros-args -r __ns:=robot").contains("must start with '/'"));
        assert!(err("p --ros-args -r x:__node:=y").contains("node-targeted"));
        assert!(err("p --ros-args -r rosservice://a:=b").contains("service remapping"));
    }

    #[test]
    fn flag_errors_name_the_text() {
        assert_eq!(err("p --ros-args --frob"), "--ros-args: unknown ROS argument \"--frob\"");
        assert_eq!(err("p --ros-args -p"), "--ros-args: -p expects a value, got nothing");
        assert_eq!(err("p --ros-args -p labels"), "--ros-args: -p expects name:=value, got \"labels\"");
        assert_eq!(err("p --ros-args -r :=x"), "--ros-args: -r expects from:=to, got \":=x\"");
        assert_eq!(err("p --ros-args -r a:=1b"), "invalid topic name \"1b\": token \"1b\" starts with a digit");
        assert!(err("p --ros-args -p n:foo:=1").contains("\"n:foo\""));
        assert!(err("p --ros-args -p x:=").contains("empty/null"));
    }

    #[test]
    fn log_enclave_and_flags() {
        let (_, ros) = split("p --ros-args --log-level DEBUG --log-level rcl:=warn -e /e --disable-rosout-logs --disable-stdout-logs --disable-external-lib-logs")
        .unwrap();
        assert_eq!(ros.log_level.as_deref(), Some("debug"));
        assert_eq!(ros.logger_levels, [("rcl".to_string(), "warn".to_string())]);
        assert_eq!(ros.enclave.as_deref(), Some("/e"));
        assert!(ros.disable_rosout_logs && ros.disable_stdout_logs && ros.disable_external_lib_logs);
        assert!(err("p --ros-args --log-level loud").contains("\"loud\""));
    }

    #[test]
    fn log_levels_map_to_tracing() {
        let levels = |line: &str| split(line).unwrap().1.log_levels("segmenter");
        assert_eq!(levels("p"), LogLevels::default());
        assert_eq!(levels("p").directives("warn"), "warn");
        let l = levels("p --ros-args --log-level DEBUG");
        assert_eq!((l.default, l.directives("warn")), (Some("debug"), "debug".to_string()));
        assert_eq!(levels("p --ros-args --log-level Fatal").default, Some("error"));
        assert_eq!(levels("p --ros-args --log-level info --log-level unset").default, None, "unset leaves it to -v");
        let l = levels(
            "p --ros-args --log-level segmenter:=debug --log-level rcl:=warn --log-level rmw_fastrtps_cpp:=info --log-level rcl:=info",
        );
        assert_eq!(l.default, None);
        assert_eq!(l.node, Some("debug"));
        assert_eq!(l.ignored, ["rcl", "rmw_fastrtps_cpp"]);
        assert_eq!(l.directives("info"), "info,ovseg=debug,engine=debug,calibration=debug");
        // The node's logger follows remaps; rclcpp's namespaced spelling works too.
        let l = levels("p --ros-args -r __node:=seg -r __ns:=/robot/a --log-level segmenter:=debug --log-level seg:=warn");
        assert_eq!((l.node, l.ignored), (Some("warn"), vec!["segmenter".to_string()]));
        assert_eq!(levels("p --ros-args -r __ns:=/robot --log-level robot.segmenter:=error").node, Some("error"));
        assert_eq!(levels("p --ros-args --log-level segmenter:=debug --log-level segmenter:=unset").node, None);
        assert!(err("p --ros-args --log-level segmenter:=verbose").contains("\"segmenter:=verbose\""));
    }

    #[test]
    fn param_values_parse_as_yaml() {
        assert_eq!(param("a:=true"), P::Boolean(true));
        assert_eq!(param("a:=3"), P::Integer(3));
        assert_eq!(param("a:=0.5"), P::Double(0.5));
        assert_eq!(param("a:=hello"), P::String("hello".into()));
        assert_eq!(param("a:=\"3\""), P::String("3".into()));
        assert_eq!(param("a:=['a', 'b']"), P::StringArray(vec!["a".into(), "b".into()]));
        assert_eq!(param("a:=[1, 2]"), P::IntegerArray(vec![1, 2]));
        assert_eq!(param("a:=[1, 2.5]"), P::DoubleArray(vec![1.0, 2.5]));
        assert_eq!(param("a:=[true]"), P::BooleanArray(vec![true]));
        assert_eq!(param("a:=[]"), P::StringArray(vec![]));
        assert!(err("p --ros-args -p a:=[1,x]").contains("mixes element types"));
        assert!(err("p --ros-args -p a:=[[1]]").contains("nested"));
        assert!(err("p --ros-args -p a:={b:1}").contains("mapping"));
        let (_, ros) = split("p --ros-args -p a:=1 -p b:=2 -p a:=3").unwrap();
        assert_eq!(ros.params, [("a".to_string(), P::Integer(3)), ("b".to_string(), P::Integer(2))]);
    }

    #[test]
    fn params_file_selectors_and_flattening() {
        let f = yaml_file(
            "/**:\n  ros__parameters:\n    all: 1\n    over: 1\n\
             seg:\n  ros__parameters:\n    root_only: true\n\
             /robot/seg:\n  ros__parameters:\n    model: {name: clip, size: 224}\n    over: 2\n\
             /**/seg:\n  ros__parameters:\n    deep: 0.5\n\
             /robot/*:\n  ros__parameters:\n    labels: [a, b]\n\
             robot:\n  seg:\n    ros__parameters:\n      nested: x\n\
             /other:\n  ros__parameters:\n    ignored: 1\n",
        );
        let got = load_params_file(f.path(), "/robot/seg").unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["all", "over", "model.name", "model.size", "deep", "labels", "nested"]);
        assert_eq!(got[1].1, P::Integer(2));
        assert_eq!(got[3].1, P::Integer(224));
        let root = load_params_file(f.path(), "/seg").unwrap();
        assert!(root.iter().any(|(n, _)| n == "root_only") && root.iter().any(|(n, _)| n == "deep"));
        assert!(!root.iter().any(|(n, _)| n == "labels"));
        assert!(!load_params_file(f.path(), "/robot/a/b").unwrap().iter().any(|(n, _)| n == "labels"));
    }

    #[test]
    fn later_selectors_win_and_dash_p_wins_over_files() {
        let f = yaml_file("/ns/n:\n  ros__parameters:\n    x: 1\n/**:\n  ros__parameters:\n    x: 2\n    y: [1, 2.0]\n");
        assert_eq!(load_params_file(f.path(), "/ns/n").unwrap()[0].1, P::Integer(2));
        let path = f.path().to_str().unwrap();
        let (_, ros) = split(&format!("p --ros-args -p x:=9 --params-file {path}")).unwrap();
        let got = ros.parameter_overrides("/ns/n").unwrap();
        assert_eq!(got, [("x".to_string(), P::Integer(9)), ("y".to_string(), P::DoubleArray(vec![1.0, 2.0]))]);
    }

    #[test]
    fn params_file_errors_name_file_and_key() {
        let check = |text: &str, want: &str| {
            let f = yaml_file(text);
            let msg = load_params_file(f.path(), "/n").unwrap_err().to_string();
            assert!(msg.contains(&f.path().display().to_string()), "{msg}");
            assert!(msg.contains(want), "{msg} lacks {want}");
        };
        check("n:\n  ros__parameters:\n    l: [1, a]\n", "n.ros__parameters.l: sequence mixes");
        check("n:\n  ros__parameters:\n    l: [[1]]\n", "n.ros__parameters.l: nested");
        check("n:\n  ros__parameters:\n    z:\n", "n.ros__parameters.z: empty/null");
        check("n:\n  ros_parameters:\n    x: 1\n", ": n: missing ros__parameters");
        check("n: 3\n", "n: missing ros__parameters");
        check("n:\n  ros__parameters:\n    a: [1\n  b: 2\n", "line 4");
        let missing = Path::new("/nonexistent/ovseg-params.yaml");
        assert!(load_params_file(missing, "/n").unwrap_err().to_string().contains("cannot read parameters file /nonexistent"));
    }

    #[test]
    fn names_expand_like_rcl() {
        assert_eq!(fully_qualified_node_name("/", "seg"), "/seg");
        assert_eq!(fully_qualified_node_name("/robot", "seg"), "/robot/seg");
        assert_eq!(fully_qualified_node_name("", "seg"), "/seg");
        let r = |name: &str, ns: &str| resolve_topic(name, ns, "seg", &[]).unwrap();
        assert_eq!(r("image", "/robot"), "/robot/image");
        assert_eq!(r("image", "/"), "/image");
        assert_eq!(r("/abs/x", "/robot"), "/abs/x");
        assert_eq!(r("~", "/robot"), "/robot/seg");
        assert_eq!(r("~/mask", "/robot"), "/robot/seg/mask");
        assert_eq!(r("~/mask", "/"), "/seg/mask");
    }

    #[test]
    fn remaps_match_expanded_names_first_rule_wins() {
        let rule = |node: Option<&str>, from: &str, to: &str| Remap { node: node.map(Into::into), from: from.into(), to: to.into() };
        let rules = [
            rule(Some("other"), "image", "/wrong"),
            rule(None, "/robot/image", "cam/raw"),
            rule(None, "image", "/second"),
            rule(Some("seg"), "~/mask", "~/out"),
        ];
        let r = |name: &str| resolve_topic(name, "/robot", "seg", &rules).unwrap();
        assert_eq!(r("image"), "/robot/cam/raw");
        assert_eq!(r("/robot/image"), "/robot/cam/raw");
        assert_eq!(r("/robot/seg/mask"), "/robot/seg/out");
        assert_eq!(r("other"), "/robot/other");
    }

    #[test]
    fn compressed_streams_follow_the_base_remap_or_their_own() {
        // As the node names image_transport streams: `<resolved base>/compressed`, resolved again.
        let compressed = |rules: &[Remap]| {
            let base = resolve_topic("image", "/robot", "seg", rules).unwrap();
            resolve_topic(&format!("{base}/compressed"), "/robot", "seg", rules).unwrap()
        };
        let rule = |from: &str, to: &str| Remap { node: None, from: from.into(), to: to.into() };
        assert_eq!(compressed(&[]), "/robot/image/compressed");
        assert_eq!(compressed(&[rule("image", "/cam/image_raw")]), "/cam/image_raw/compressed");
        assert_eq!(compressed(&[rule("image/compressed", "/cam/image_raw/compressed")]), "/cam/image_raw/compressed");
    }

    #[test]
    fn invalid_names_are_reported() {
        let e = |name: &str, ns: &str, node: &str| resolve_topic(name, ns, node, &[]).unwrap_err().to_string();
        assert_eq!(e("", "/", "n"), "invalid topic name \"\": is empty");
        assert_eq!(e("a//b", "/", "n"), "invalid topic name \"a//b\": contains '//'");
        assert_eq!(e("a/", "/", "n"), "invalid topic name \"a/\": ends with '/'");
        assert_eq!(e("a/1b", "/", "n"), "invalid topic name \"a/1b\": token \"1b\" starts with a digit");
        assert!(e("a-b", "/", "n").contains("contains '-'"));
        assert!(e("~x", "/", "n").contains("'~' must be followed by '/'"));
        assert_eq!(e("x", "/ns/", "n"), "invalid namespace \"/ns/\": ends with '/'");
        assert!(e("x", "/", "9n").starts_with("invalid node name \"9n\""));
    }

    #[test]
    fn dds_environment() {
        let with_warnings = |pairs: &'static [(&'static str, &'static str)]| {
            dds_env_from(move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
        };
        let env = |pairs: &'static [(&'static str, &'static str)]| with_warnings(pairs).map(|(env, _)| env);
        assert_eq!(with_warnings(&[]).unwrap(), (DdsEnv { domain_id: 0, localhost_only: false }, vec![]));
        assert_eq!(env(&[("ROS_DOMAIN_ID", ""), ("ROS_LOCALHOST_ONLY", "1")]).unwrap(), DdsEnv { domain_id: 0, localhost_only: true });
        assert_eq!(env(&[("ROS_DOMAIN_ID", "232")]).unwrap().domain_id, 232);
        assert_eq!(
            with_warnings(&[("ROS_AUTOMATIC_DISCOVERY_RANGE", "localhost")]).unwrap(),
            (DdsEnv { domain_id: 0, localhost_only: true }, vec![])
        );
        let (off, warnings) = with_warnings(&[("ROS_AUTOMATIC_DISCOVERY_RANGE", "OFF")]).unwrap();
        assert!(off.localhost_only);
        assert!(warnings.len() == 1 && warnings[0].contains("OFF") && warnings[0].contains("loopback"), "{warnings:?}");
        assert!(!env(&[("ROS_LOCALHOST_ONLY", "0")]).unwrap().localhost_only);
        assert!(!env(&[("ROS_LOCALHOST_ONLY", "0"), ("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")]).unwrap().localhost_only);
        assert!(!env(&[("ROS_AUTOMATIC_DISCOVERY_RANGE", "SYSTEM_DEFAULT")]).unwrap().localhost_only);
        assert_eq!(
            env(&[("ROS_DOMAIN_ID", "233")]).unwrap_err().to_string(),
            "environment variable ROS_DOMAIN_ID=\"233\" is invalid: expected an integer from 0 to 232"
        );
        assert!(env(&[("ROS_DOMAIN_ID", "-1")]).unwrap_err().to_string().contains("\"-1\""));
        let bad = env(&[("ROS_AUTOMATIC_DISCOVERY_RANGE", "LAN")]).unwrap_err().to_string();
        assert!(bad.contains("ROS_AUTOMATIC_DISCOVERY_RANGE=\"LAN\"") && bad.contains("SUBNET"), "{bad}");
    }

    #[test]
    fn localhost_only_wins_over_range_and_peers_like_rcl() {
        let run = |pairs: &'static [(&'static str, &'static str)]| {
            dds_env_from(move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
        };
        let (alone, warnings) = run(&[("ROS_LOCALHOST_ONLY", "1")]);
        assert!(alone.localhost_only);
        assert!(warnings.len() == 1 && warnings[0].contains("deprecated") && !warnings[0].contains("ignored"), "{warnings:?}");
        let (both, warnings) =
            run(&[("ROS_LOCALHOST_ONLY", "1"), ("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET"), ("ROS_STATIC_PEERS", "10.0.0.2")]);
        assert!(both.localhost_only, "ROS_LOCALHOST_ONLY=1 overrides the range, as in rcl");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("ROS_AUTOMATIC_DISCOVERY_RANGE=\"SUBNET\" and ROS_STATIC_PEERS=\"10.0.0.2\", which are ignored"),
            "{warnings:?}"
        );
        // rcl never reads the range in this case, so a bad one is not an error either.
        let (bad_range, warnings) = run(&[("ROS_LOCALHOST_ONLY", "1"), ("ROS_AUTOMATIC_DISCOVERY_RANGE", "LAN")]);
        assert!(
            bad_range.localhost_only && warnings[0].contains("ROS_AUTOMATIC_DISCOVERY_RANGE=\"LAN\", which is ignored"),
            "{warnings:?}"
        );
        let (peers, warnings) = run(&[("ROS_STATIC_PEERS", "192.168.0.7;robot.local")]);
        assert!(!peers.localhost_only);
        assert!(warnings.len() == 1 && warnings[0].starts_with("ROS_STATIC_PEERS=\"192.168.0.7;robot.local\" is ignored"), "{warnings:?}");
    }
}
