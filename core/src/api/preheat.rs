//! The preheat bodies: the origin's `POST /preheat` ([`PreheatRequest`]), the agent's
//! ([`AgentPreheatRequest`]), a job's progress as the origin reports it ([`PreheatStatus`],
//! from `POST /preheat` with 202 and from `GET /preheat/<id>`), and the agent's answer
//! ([`PreheatAnswer`]: the origin's status with the origin that runs the job).
//!
//! Requests reject unknown keys; answers accept them, so a newer origin can add a field.

use std::collections::BTreeMap;

use crate::Digest;

/// The body of the origin's `POST /preheat`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreheatRequest {
    /// Repository, such as `library/nginx`.
    pub name: String,
    /// A tag or a digest.
    pub reference: String,
    /// The upstream registry host, as containerd's `ns=`; the default upstream if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns: Option<String>,
    /// `true` pins every digest in the origin's store, `false` unpins them; absent leaves
    /// pins as they are. Sent only when set: origins from before pinning refuse the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<bool>,
}

/// The body of the agent's `POST /preheat`: the origin's request, and whether the agent also
/// downloads every blob into its own store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPreheatRequest {
    pub name: String,
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns: Option<String>,
    /// Also download every blob into the agent's store.
    #[serde(default)]
    pub prefetch: bool,
    /// `true` pins every blob (on the origins, and with `prefetch` on the agent), `false`
    /// unpins them; absent leaves pins as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<bool>,
}

/// Where one blob of a preheat stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobState {
    Pending,
    Done,
    Failed,
}

/// A preheat's progress on its origin: the answer of `POST /preheat` (202) and
/// `GET /preheat/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreheatStatus {
    /// Unique on the origin that runs the job only.
    pub id: String,
    pub name: String,
    pub reference: String,
    /// The digest the reference resolved to.
    pub manifest: Digest,
    /// Every manifest, config and layer digest, in the order they are fetched.
    pub digests: Vec<Digest>,
    pub states: BTreeMap<Digest, BlobState>,
    /// Why a blob failed, by digest.
    #[serde(default)]
    pub errors: BTreeMap<Digest, String>,
}

impl PreheatStatus {
    /// Whether no blob is pending.
    pub fn finished(&self) -> bool {
        self.states.values().all(|s| *s != BlobState::Pending)
    }

    /// How many blobs are in `state`.
    pub fn count(&self, state: BlobState) -> usize {
        self.states.values().filter(|s| **s == state).count()
    }
}

/// The agent's answer to `POST /preheat` (202): the origin's [`PreheatStatus`], the ring id
/// of that origin, and how many blobs the agent prefetches.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreheatAnswer {
    #[serde(flatten)]
    pub status: PreheatStatus,
    /// The ring id of the origin that runs the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Blobs the agent downloads into its own store; absent without `prefetch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T>(value: &T, json: &str)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_string(value).unwrap(), json);
        assert_eq!(&serde_json::from_str::<T>(json).unwrap(), value);
    }

    #[test]
    fn requests_round_trip_as_the_exact_json() {
        let mut req = PreheatRequest { name: "team/app".into(), reference: "v1".into(), ns: None, pin: None };
        check(&req, r#"{"name":"team/app","reference":"v1"}"#);
        req.ns = Some("ghcr.io".into());
        req.pin = Some(true);
        check(&req, r#"{"name":"team/app","reference":"v1","ns":"ghcr.io","pin":true}"#);
        let null_ns: PreheatRequest = serde_json::from_str(r#"{"name":"a","reference":"v1","ns":null}"#).unwrap();
        assert_eq!(null_ns.ns, None, "older agents send a null ns");
        let err = serde_json::from_str::<PreheatRequest>(r#"{"name":"a","reference":"v1","prefetch":true}"#);
        assert!(err.is_err(), "the origin refuses the agent's keys");

        let agent = AgentPreheatRequest {
            name: "team/app".into(),
            reference: "v1".into(),
            ns: Some("docker.io".into()),
            prefetch: true,
            pin: Some(false),
        };
        check(&agent, r#"{"name":"team/app","reference":"v1","ns":"docker.io","prefetch":true,"pin":false}"#);
        let plain: AgentPreheatRequest = serde_json::from_str(r#"{"name":"a","reference":"v1"}"#).unwrap();
        assert!(!plain.prefetch && plain.pin.is_none() && plain.ns.is_none());
    }

    #[test]
    fn answers_round_trip_as_the_exact_json() {
        let (m, l) = (Digest::of(b"m"), Digest::of(b"l"));
        let status = PreheatStatus {
            id: "ph-1".into(),
            name: "team/app".into(),
            reference: "v1".into(),
            manifest: m,
            digests: vec![m, l],
            states: BTreeMap::from([(m, BlobState::Done), (l, BlobState::Failed)]),
            errors: BTreeMap::from([(l, "boom".to_string())]),
        };
        let (a, b) = if m < l { (m, l) } else { (l, m) };
        let state = |d| if d == m { "done" } else { "failed" };
        let body = format!(
            r#""id":"ph-1","name":"team/app","reference":"v1","manifest":"{m}","digests":["{m}","{l}"],"states":{{"{a}":"{}","{b}":"{}"}},"errors":{{"{l}":"boom"}}"#,
            state(a),
            state(b)
        );
        check(&status, &format!("{{{body}}}"));
        assert!(status.finished());
        assert_eq!((status.count(BlobState::Done), status.count(BlobState::Failed)), (1, 1));

        let answer = PreheatAnswer { status, origin: Some("origin-0".into()), prefetch: Some(2) };
        check(&answer, &format!(r#"{{{body},"origin":"origin-0","prefetch":2}}"#));
        let bare: PreheatAnswer = serde_json::from_str(&format!("{{{body}}}")).unwrap();
        assert_eq!((bare.origin, bare.prefetch), (None, None));
    }
}
