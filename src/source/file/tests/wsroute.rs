use super::*;
use crate::model::{LoadBalancer, Scheme};

const CHAT: &str = "\
apiVersion: wsgate.io/v1alpha1
kind: WsRoute
metadata: {name: chat}
spec:
  upstreamPathTemplate: /chat
  downstreamPathTemplate: /ws
  downstreamHostAndPorts: [{host: 127.0.0.1, port: 5001}]
";

/// Builds a document like `CHAT` with another name and an extra spec line.
fn doc(name: &str, extra_spec: &str) -> String {
    let mut d = CHAT.replace("name: chat", &format!("name: {name}"));
    d.push_str(extra_spec);
    d
}

/// Each valid document becomes a route named after file, position and metadata.name.
#[test]
fn documents_become_routes_in_declaration_order() {
    let text = format!("{}---\n{}", doc("a", ""), doc("b", "  priority: 3\n"));
    let loaded = load_str("routes.yaml", &text);
    assert_eq!(loaded.problems, vec![]);
    assert_eq!(ids(&loaded), ["routes.yaml#1 (a)", "routes.yaml#2 (b)"]);
    assert!(loaded.routes[0].order < loaded.routes[1].order);
    assert_eq!(loaded.routes[1].priority, 3);
}

/// A bad value is reported with file, document, name, line and field path; the other
/// documents are still loaded.
#[test]
fn bad_port_is_reported_precisely_and_neighbours_survive() {
    let bad = doc("bad", "").replace("port: 5001", "port: 70000");
    let text = format!("{}---\n{bad}---\n{}", doc("a", ""), doc("c", ""));
    let loaded = load_str("routes.yaml", &text);
    assert_eq!(ids(&loaded), ["routes.yaml#1 (a)", "routes.yaml#3 (c)"]);
    let [p] = loaded.problems.as_slice() else {
        panic!("{:?}", loaded.problems)
    };
    assert_eq!(p.severity, Severity::Error);
    assert_eq!(p.document, Some(2));
    assert_eq!(p.name.as_deref(), Some("bad"));
    assert_eq!(p.field, "spec.downstreamHostAndPorts[0].port");
    assert_eq!(p.line, Some(15));
    assert_eq!(
        p.to_string(),
        "routes.yaml:15: document 2 (bad): spec.downstreamHostAndPorts[0].port: InvalidParameters: 70000 is not a port (1-65535)"
    );
}

/// Unknown keys are errors naming the key, in the spec, nested objects and the envelope.
#[test]
fn unknown_keys_are_named_with_their_line() {
    let in_spec = doc("a", "  upstreamHots: x.example.com\n");
    let nested = doc("b", "").replace("port: 5001}", "port: 5001, weight: 2}");
    let envelope = doc("c", "").replace("kind: WsRoute", "kind: WsRoute\nlabels: {}");
    let text = format!("{in_spec}---\n{nested}---\n{envelope}");
    let loaded = load_str("routes.yaml", &text);
    assert!(loaded.routes.is_empty());
    assert_eq!(
        summary(&loaded),
        [
            (Severity::Error, Some(1), "spec.upstreamHots"),
            (
                Severity::Error,
                Some(2),
                "spec.downstreamHostAndPorts[0].weight"
            ),
            (Severity::Error, Some(3), "labels"),
        ]
    );
    assert_eq!(loaded.problems[0].line, Some(8));
    assert!(
        loaded.problems[0]
            .message
            .starts_with("unknown field `upstreamHots`"),
        "{}",
        loaded.problems[0].message
    );
    assert_eq!(loaded.problems[2].line, Some(20));
}

/// A document of another apiVersion or kind is refused, naming the field.
#[test]
fn wrong_api_version_or_kind_is_named() {
    let text = format!(
        "{}---\n{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n",
        doc("a", "").replace("wsgate.io/v1alpha1", "wsgate.io/v1"),
        doc("b", "").replace("kind: WsRoute", "kind: WsRoutes"),
    );
    let loaded = load_str("routes.yaml", &text);
    assert_eq!(
        summary(&loaded),
        [
            (Severity::Error, Some(1), "apiVersion"),
            (Severity::Error, Some(2), "kind"),
            (Severity::Error, Some(3), "apiVersion"),
            (Severity::Error, Some(3), "kind"),
        ]
    );
    assert_eq!(
        loaded.problems[0].message,
        "`wsgate.io/v1` is not `wsgate.io/v1alpha1`"
    );
    assert_eq!(loaded.problems[1].line, Some(10));
}

/// A YAML syntax error spoils only its own document.
#[test]
fn syntax_error_spoils_only_its_document() {
    let broken =
        "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nspec: {upstreamPathTemplate: [/oops\n";
    let text = format!("{}---\n{broken}---\n{}", doc("a", ""), doc("c", ""));
    let loaded = load_str("routes.yaml", &text);
    assert_eq!(ids(&loaded), ["routes.yaml#1 (a)", "routes.yaml#3 (c)"]);
    let [p] = loaded.problems.as_slice() else {
        panic!("{:?}", loaded.problems)
    };
    assert_eq!((p.document, p.field.as_str()), (Some(2), ""));
    assert!(p.line.is_some_and(|l| (9..=12).contains(&l)), "{p}");
}

/// Empty documents (a leading `---`, comments only, `---` twice) are skipped but counted.
#[test]
fn empty_documents_are_skipped() {
    let text = format!(
        "# routes\n---\n{}---\n# nothing here\n---\n{}",
        doc("a", ""),
        doc("b", "")
    );
    let loaded = load_str("routes.yaml", &text);
    assert_eq!(loaded.problems, vec![]);
    assert_eq!(ids(&loaded), ["routes.yaml#1 (a)", "routes.yaml#3 (b)"]);
}

/// metadata.name is required and unique per namespace within a file.
#[test]
fn names_are_required_and_unique() {
    let nameless = doc("x", "").replace("metadata: {name: x}", "metadata: {namespace: apps}");
    let text = format!(
        "{}---\n{}---\n{nameless}---\n{}",
        doc("a", ""),
        doc("a", ""),
        doc("a", "").replace("{name: a}", "{name: a, namespace: other}")
    );
    let loaded = load_str("routes.yaml", &text);
    assert_eq!(ids(&loaded), ["routes.yaml#1 (a)", "routes.yaml#4 (a)"]);
    assert_eq!(
        summary(&loaded),
        [
            (Severity::Error, Some(2), "metadata.name"),
            (Severity::Error, Some(3), "metadata.name"),
        ]
    );
    assert!(loaded.problems[0]
        .message
        .contains("already used by document 1"));
}

/// Every field error of route_from_spec is reported, each with its own line.
#[test]
fn spec_errors_carry_field_and_line() {
    let text = doc(
        "a",
        "  loadBalancerOptions: {type: Random}\n  timeouts:\n    connect: 5 parsecs\n",
    )
    .replace("/chat", "chat");
    let loaded = load_str("routes.yaml", &text);
    let got: Vec<_> = loaded
        .problems
        .iter()
        .map(|p| (p.field.as_str(), p.line))
        .collect();
    assert_eq!(
        got,
        [
            ("spec.upstreamPathTemplate", Some(5)),
            ("spec.loadBalancerOptions.type", Some(8)),
            ("spec.timeouts.connect", Some(10)),
        ]
    );
}

/// Standalone files cannot use serviceName.
#[test]
fn service_name_is_refused_in_files() {
    let text = doc("a", "  serviceName: chat\n  servicePort: 80\n");
    let loaded = load_str("routes.yaml", &text);
    assert!(loaded.routes.is_empty());
    assert_eq!(
        summary(&loaded),
        [(Severity::Error, Some(1), "spec.serviceName")]
    );
}

/// A `kind: List` of WsRoutes loads each item; problems name the item.
#[test]
fn list_items_load_and_problems_name_the_item() {
    let item = |name: &str, port: u32| {
        format!(
            "- apiVersion: wsgate.io/v1alpha1\n  kind: WsRoute\n  metadata: {{name: {name}}}\n  spec:\n    upstreamPathTemplate: /{name}\n    downstreamPathTemplate: /ws\n    downstreamHostAndPorts: [{{host: h, port: {port}}}]\n"
        )
    };
    let text = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}{}{}",
        item("a", 1),
        item("b", 0),
        item("c", 3)
    );
    let loaded = load_str("list.yaml", &text);
    assert_eq!(
        ids(&loaded),
        ["list.yaml#1/items[0] (a)", "list.yaml#1/items[2] (c)"]
    );
    assert_eq!(
        summary(&loaded),
        [(
            Severity::Error,
            Some(1),
            "items[1].spec.downstreamHostAndPorts[0].port"
        )]
    );
    assert_eq!(loaded.problems[0].line, Some(17));
}

/// An unknown key inside a list item is named with the item's path.
#[test]
fn unknown_key_in_list_item_names_the_item() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: wsgate.io/v1alpha1\n  kind: WsRoute\n  metadata: {name: a}\n  spec: {upstreamPathTemplate: /a, downstreamPathTemplate: /, downstreamHostAndPorts: [{host: h, port: 1}], colour: red}\n";
    let loaded = load_str("list.yaml", text);
    assert_eq!(
        summary(&loaded),
        [(Severity::Error, Some(1), "items[0].spec.colour")]
    );
    assert_eq!(loaded.problems[0].line, Some(7));
}

/// `kubectl get -o yaml` output (labels, annotations, status) loads.
#[test]
fn status_labels_and_annotations_are_accepted() {
    let text = doc("a", "status:\n  readyEndpoints: 1\n").replace(
        "metadata: {name: a}",
        "metadata: {name: a, labels: {app: chat}, annotations: {note: x}}",
    );
    let loaded = load_str("routes.yaml", &text);
    assert_eq!(loaded.problems, vec![]);
    assert_eq!(loaded.routes.len(), 1);
}

/// The multi-document fixture loads completely with its options.
#[test]
fn good_fixture_loads() {
    let loaded = load(&[fixture("good.yaml")]).unwrap();
    assert_eq!(loaded.problems, vec![]);
    assert_eq!(ids(&loaded), ["good.yaml#1 (chat)", "good.yaml#2 (news)"]);
    let chat = &loaded.routes[0];
    assert_eq!(chat.endpoints.len(), 2);
    assert_eq!(chat.load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(chat.methods, [http::Method::GET, http::Method::POST]);
    let news = &loaded.routes[1];
    assert_eq!(news.scheme, Scheme::Wss);
    assert_eq!(news.upstream_host.as_deref(), Some("news.example.com"));
    assert_eq!(
        news.timeouts.idle,
        Some(std::time::Duration::from_secs(600))
    );
}

/// The broken fixture keeps its good document and names every broken one.
#[test]
fn broken_fixture_keeps_the_good_document() {
    let loaded = load(&[fixture("broken.yaml")]).unwrap();
    assert_eq!(ids(&loaded), ["broken.yaml#1 (good)"]);
    assert_eq!(
        summary(&loaded),
        [
            (
                Severity::Error,
                Some(2),
                "spec.downstreamHostAndPorts[0].port"
            ),
            (Severity::Error, Some(3), ""),
            (Severity::Error, Some(4), "spec.downstreamHostAndPort"),
        ]
    );
    assert!(loaded.has_errors());
}
