//! The connect callback as the handler receives it: a query string (GET) or a form body
//! (`form_post`), decoded as `URLSearchParams` decodes it, for one of the flows started so far or
//! for none, with or without the browser-binding cookie.
#![no_main]

#[path = "../common/header.rs"]
mod header;
#[path = "../common/instance.rs"]
mod instance;

use authpipe_core::{BrowserBinding, Callback, Client, ConnectionKey, StartRequest};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Which state the callback carries.
enum State {
    /// The state of a started flow, by index: reaches the checks after the state's.
    Started(usize),
    Raw(String),
    Absent,
}

/// Input: `started N` / `raw <state>` / `none`, then the path's provider index (empty: none),
/// then `own` / `wrong` / `none` (the browser binding), each on a line; then the query string.
struct Input {
    state: State,
    provider: Option<usize>,
    binding: Option<bool>,
    query: Vec<u8>,
}

impl Input {
    fn parse(data: &[u8]) -> Option<Self> {
        let (lines, query) = header::split(data, 3)?;
        let state = match lines[0].split_once(' ') {
            Some(("started", n)) => State::Started(n.trim().parse().ok()?),
            Some(("raw", raw)) => State::Raw(raw.to_owned()),
            _ => State::Absent,
        };
        let binding = match lines[2] {
            "own" => Some(true),
            "wrong" => Some(false),
            _ => None,
        };
        Some(Self {
            state,
            provider: lines[1].trim().parse().ok(),
            binding,
            query: query.to_vec(),
        })
    }
}

#[derive(Clone)]
struct Flow {
    state: String,
    binding: String,
}

/// Started flows, one per user, across the three providers.
fn start(runtime: &tokio::runtime::Runtime, client: &Client, n: usize) -> Flow {
    let provider = instance::PROVIDERS[n % instance::PROVIDERS.len()];
    let binding = format!("binding-{n}-0123456789abcdef");
    let started = runtime
        .block_on(client.start_connect(StartRequest {
            key: ConnectionKey::parse(provider, "tenant-1", &format!("user-{n}")).unwrap(),
            scopes: None,
            redirect_uri: None,
            browser_binding: Some(BrowserBinding::from(binding.clone())),
        }))
        .expect("a flow starts");
    Flow {
        state: secrecy::ExposeSecret::expose_secret(&started.state).to_owned(),
        binding,
    }
}

static FLOWS: LazyLock<instance::Issued<Flow>> = LazyLock::new(|| instance::Issued::new(16, start));

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let flows = &*FLOWS;
    let mut params = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(&input.query) {
        // The handler refuses a repeated parameter before the core sees the callback.
        if params
            .insert(name.into_owned(), value.into_owned())
            .is_some()
        {
            return;
        }
    }
    let mut started = None;
    let (state, own_binding) = match &input.state {
        State::Started(i) => {
            let (slot, flow) = flows.get(*i);
            started = Some(slot);
            (Some(flow.state), Some(flow.binding))
        }
        State::Raw(raw) => (Some(raw.clone()), None),
        State::Absent => (None, None),
    };
    if let Some(state) = state {
        params.insert("state".into(), state);
    }
    let browser_binding = match input.binding {
        Some(true) => own_binding.map(BrowserBinding::from),
        Some(false) => Some(BrowserBinding::from("not-the-flows-binding".to_owned())),
        None => None,
    };
    let provider = input
        .provider
        .map(|i| instance::PROVIDERS[i % instance::PROVIDERS.len()].to_owned());
    let had_error = params.contains_key("error");
    let result = flows
        .runtime
        .block_on(flows.client.handle_callback(Callback {
            params,
            provider,
            browser_binding,
        }));
    // Every endpoint is a closed port: no callback can complete, least of all one that carries
    // the provider's error.
    assert!(
        result.is_err(),
        "a callback completed (error param: {had_error})"
    );
    // A started flow the callback may have used up is replaced, so later inputs reach past the
    // state check again.
    if let Some(slot) = started {
        flows.reissue(slot);
    }
});
