//! Questions the operator asks a cluster's gateway about its S3 index
//! (which blobs S3 knows, which keys hold lost blobs): one POST with the
//! user token, answered in JSON, every failure said in one sentence.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::context::{ClusterFleet, Context};
use super::crd::StorageCluster;

/// A question to a cluster's gateway.
pub(super) struct Question<'a, Q> {
    /// The route, e.g. `/v1/s3/known-blobs`.
    pub path: &'a str,
    /// The body.
    pub body: &'a Q,
    /// What is asked, for errors: "which blobs S3 holds".
    pub what: &'a str,
    /// How long the answer may take.
    pub deadline: Duration,
}

/// POSTs `question` to `cluster`'s gateway with `token`; the answer, or
/// why there is none.
pub(super) async fn ask_gateway<Q: Serialize, A: DeserializeOwned>(
    ctx: &Context,
    cluster: &StorageCluster,
    fleet: &ClusterFleet,
    token: &str,
    question: Question<'_, Q>,
) -> Result<A, String> {
    let Question {
        path,
        body,
        what,
        deadline,
    } = question;
    let gateway = ctx.endpoints.gateway(cluster);
    let url = format!("{}{path}", gateway.trim_end_matches('/'));
    let sent = fleet
        .gateway_http
        .post(&url)
        .bearer_auth(token)
        .json(body)
        .timeout(deadline)
        .send();
    let response = sent
        .await
        .map_err(|e| format!("the gateway at {gateway} did not say {what}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let message = crate::api_error::message_of(response.text().await.unwrap_or_default());
        return Err(format!(
            "the gateway at {gateway} did not say {what} ({status}): {message}"
        ));
    }
    response
        .json()
        .await
        .map_err(|e| format!("the gateway at {gateway} answered {what} unreadably: {e}"))
}
