//! The six `rcl_interfaces` parameter services (what `ros2 param` and rclpy clients call),
//! served from our own table so `describe` carries descriptions, ranges and read-only flags.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use ros2_client::parameters::raw;
use ros2_client::rcl_interfaces::*;
use ros2_client::service::Server;
use ros2_client::builtin_interfaces::Time;
use ros2_client::{MessageTypeName, Name, Node, ParameterValue, Publisher, QosProfile, ServiceMapping, ServiceTypeName, qos::History};
use rustdds::mio1::{Events, Interest, Poll, Token};

use super::param_state::ParamState;
use super::params;

struct Servers {
    get: Server<GetParametersRequest, GetParametersResponse>,
    get_types: Server<GetParameterTypesRequest, GetParameterTypesResponse>,
    set: Server<SetParametersRequest, SetParametersResponse>,
    set_atomically: Server<SetParametersRequest, SetParametersAtomicallyResponse>,
    list: Server<ListParametersRequest, ListParametersResponse>,
    describe: Server<DescribeParametersRequest, DescribeParametersResponse>,
    /// `/parameter_events`, where ros2 param watchers and rqt learn of changes.
    events: Publisher<raw::ParameterEvent>,
    node: String,
}

fn server<Req, Resp>(node: &mut Node, fqn: &str, service: &str, type_name: &str) -> Result<Server<Req, Resp>>
where
    Req: ros2_client::Message + Clone + 'static,
    Resp: ros2_client::Message + 'static,
{
    let qos = QosProfile::publisher_default().history(History::KeepLast { depth: 10 });
    let name = Name::new(fqn, service).map_err(|e| anyhow::anyhow!("service name {fqn}/{service}: {e:?}"))?;
    // rmw_fastrtps (what rclpy uses) speaks the "enhanced" request/reply mapping.
    Ok(node.create_server(ServiceMapping::Enhanced, &name, &ServiceTypeName::new("rcl_interfaces", type_name), qos.clone(), qos)?)
}

/// Creates the services on `node` (before it is shared) and returns the loop that serves them.
pub fn create(node: &mut Node) -> Result<impl FnOnce(ParamState, Arc<AtomicBool>) + Send + use<>> {
    let fqn = node.fully_qualified_name();
    let servers = Servers {
        get: server(node, &fqn, "get_parameters", "GetParameters")?,
        get_types: server(node, &fqn, "get_parameter_types", "GetParameterTypes")?,
        set: server(node, &fqn, "set_parameters", "SetParameters")?,
        set_atomically: server(node, &fqn, "set_parameters_atomically", "SetParametersAtomically")?,
        list: server(node, &fqn, "list_parameters", "ListParameters")?,
        describe: server(node, &fqn, "describe_parameters", "DescribeParameters")?,
        events: {
            // As rcl's parameter-events profile: reliable, volatile, a deep history.
            let qos = QosProfile::publisher_default().history(History::KeepLast { depth: 1000 });
            let name = Name::new("/", "parameter_events").map_err(|e| anyhow::anyhow!("/parameter_events: {e:?}"))?;
            let topic = node.create_topic(&name, MessageTypeName::new("rcl_interfaces", "ParameterEvent"), &qos)?;
            node.create_publisher(&topic, Some(qos))?
        },
        node: fqn.clone(),
    };
    Ok(move |state: ParamState, stop: Arc<AtomicBool>| serve(servers, state, stop))
}

fn serve(mut servers: Servers, mut state: ParamState, stop: Arc<AtomicBool>) {
    let mut poll = match register(&mut servers) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("parameter services unavailable: {e}");
            return;
        }
    };
    // Every parameter is new once, as when an rcl node declares its parameters.
    let declared: Vec<String> = state.names().cloned().collect();
    publish_event(&servers, &state, &declared, true);
    let mut events = Events::with_capacity(16);
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100))) {
            tracing::warn!("parameter service poll: {e}");
            continue;
        }
        // Readiness is edge-triggered; draining all six (non-blocking) every wake-up is cheap
        // and never misses a request.
        handle_all(&servers, &mut state);
    }
}

fn register(s: &mut Servers) -> std::io::Result<Poll> {
    let poll = Poll::new()?;
    let r = poll.registry();
    r.register(&mut s.get, Token(0), Interest::READABLE)?;
    r.register(&mut s.get_types, Token(1), Interest::READABLE)?;
    r.register(&mut s.set, Token(2), Interest::READABLE)?;
    r.register(&mut s.set_atomically, Token(3), Interest::READABLE)?;
    r.register(&mut s.list, Token(4), Interest::READABLE)?;
    r.register(&mut s.describe, Token(5), Interest::READABLE)?;
    Ok(poll)
}

/// Answers every waiting request.
fn handle_all(s: &Servers, state: &mut ParamState) {
    respond(&s.get, |req: GetParametersRequest| GetParametersResponse {
        values: req.names.iter().map(|n| state.get(n).cloned().unwrap_or(ParameterValue::NotSet).into()).collect(),
    });
    respond(&s.get_types, |req: GetParameterTypesRequest| GetParameterTypesResponse {
        values: req.names.iter().map(|n| state.get(n).map_or(raw::ParameterType::NOT_SET, |v| v.to_parameter_type() as u8)).collect(),
    });
    respond(&s.list, |req: ListParametersRequest| {
        let names = state.names().filter(|n| req.prefixes.is_empty() || req.prefixes.iter().any(|p| n.starts_with(p.as_str())));
        ListParametersResponse { result: ListParametersResult { names: names.cloned().collect(), prefixes: vec![] } }
    });
    respond(&s.describe, |req: DescribeParametersRequest| DescribeParametersResponse {
        values: req
            .names
            .iter()
            .map(|n| match (params::find(n), state.get(n)) {
                (Some(spec), Some(value)) => params::descriptor(spec, value),
                _ => raw::ParameterDescriptor {
                    name: n.clone(),
                    r#type: raw::ParameterType::NOT_SET,
                    description: "no such parameter".into(),
                    additional_constraints: String::new(),
                    read_only: true,
                    dynamic_typing: false,
                    floating_point_range: vec![],
                    integer_range: vec![],
                },
            })
            .collect(),
    });
    let mut changed = Vec::new();
    respond(&s.set, |req: SetParametersRequest| SetParametersResponse {
        results: req
            .parameter
            .into_iter()
            .map(|p| {
                let name = p.name.clone();
                let result = state.set(vec![(p.name, p.value.into())]);
                if result.is_ok() {
                    changed.push(name.clone());
                }
                outcome(&name, result)
            })
            .collect(),
    });
    respond(&s.set_atomically, |req: SetParametersRequest| {
        let changes: Vec<(String, ParameterValue)> = req.parameter.into_iter().map(|p| (p.name, p.value.into())).collect();
        let names: Vec<String> = changes.iter().map(|(n, _)| n.clone()).collect();
        let result = state.set(changes);
        if result.is_ok() {
            changed.extend(names.iter().cloned());
        }
        SetParametersAtomicallyResponse { result: outcome(&names.join(", "), result) }
    });
    if !changed.is_empty() {
        publish_event(s, state, &changed, false);
    }
}

/// A ParameterEvent with the current values of `names`, as new or as changed parameters.
fn publish_event(s: &Servers, state: &ParamState, names: &[String], new: bool) {
    let parameters: Vec<raw::Parameter> =
        names.iter().filter_map(|n| state.get(n).map(|v| raw::Parameter { name: n.clone(), value: v.clone().into() })).collect();
    let (new_parameters, changed_parameters) = if new { (parameters, vec![]) } else { (vec![], parameters) };
    let event = raw::ParameterEvent { stamp: Time::now(), node: s.node.clone(), new_parameters, changed_parameters, deleted_parameters: vec![] };
    if let Err(e) = s.events.publish(event) {
        tracing::warn!("/parameter_events: {e:?}");
    }
}

fn outcome(name: &str, result: Result<(), String>) -> raw::SetParametersResult {
    match result {
        Ok(()) => {
            tracing::info!("parameter {name} set");
            raw::SetParametersResult { successful: true, reason: String::new() }
        }
        Err(reason) => {
            tracing::warn!("parameter {name} refused: {reason}");
            raw::SetParametersResult { successful: false, reason }
        }
    }
}

fn respond<Req, Resp>(server: &Server<Req, Resp>, mut answer: impl FnMut(Req) -> Resp)
where
    Req: ros2_client::Message + Clone + 'static,
    Resp: ros2_client::Message + 'static,
{
    loop {
        match server.receive_request() {
            Ok(Some((id, req))) => {
                if let Err(e) = server.send_response(id, answer(req)) {
                    tracing::warn!("parameter service response: {e:?}");
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("parameter service request: {e:?}");
                break;
            }
        }
    }
}
