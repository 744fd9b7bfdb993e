//! The node's log records on `/rosout` (rcl_interfaces/Log), as rcl nodes publish theirs, so
//! that rqt_console, `ros2 launch` and bag recorders see them. A tracing layer, installed with
//! the log at start-up, forwards from the moment the node hands it its writer.
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use ros2_client::builtin_interfaces::Time;
use ros2_client::{Log, Publisher};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

struct Sink {
    writer: Arc<Option<Publisher<Log>>>,
    logger: String,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// From now on, records go to `/rosout` through `writer` under `logger` (rcl's logger name: the
/// namespace and node name joined by dots, e.g. `robot1.segmenter`).
pub fn forward_to(writer: Arc<Option<Publisher<Log>>>, logger: String) {
    let _ = SINK.set(Sink { writer, logger });
}

/// rcl's logger name of a node.
pub fn logger_name(namespace: &str, node: &str) -> String {
    namespace.split('/').filter(|p| !p.is_empty()).chain([node]).collect::<Vec<_>>().join(".")
}

/// Forwards every record the log's filter lets through, but the DDS stack's own: those include
/// any made while publishing a record, which would otherwise come back here.
pub struct RosoutLayer;

impl<S: Subscriber> Layer<S> for RosoutLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let Some(sink) = SINK.get() else { return };
        let Some(writer) = sink.writer.as_ref() else { return };
        let meta = event.metadata();
        if ["ros2_client", "rustdds"].iter().any(|t| meta.target().starts_with(t)) {
            return;
        }
        let level = match *meta.level() {
            Level::ERROR => Log::ERROR,
            Level::WARN => Log::WARN,
            Level::INFO => Log::INFO,
            _ => Log::DEBUG,
        };
        let mut text = Text::default();
        event.record(&mut text);
        let record = Log {
            stamp: Time::now(),
            level,
            name: sink.logger.clone(),
            msg: text.0,
            file: meta.file().unwrap_or_default().into(),
            function: meta.target().into(),
            line: meta.line().unwrap_or(0),
        };
        // A record that cannot go out is still on stderr; saying so here would loop.
        let _ = writer.publish(record);
    }
}

/// The record's message, then its other fields as ` name=value`.
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logger_names_join_namespace_and_node_with_dots() {
        assert_eq!(logger_name("/", "segmenter"), "segmenter");
        assert_eq!(logger_name("/robot1/front", "seg"), "robot1.front.seg");
    }
}
