//! Questions the operator asks a cluster's gateway about its S3 index
//! (which blobs S3 knows, which keys hold lost blobs): one POST with the
//! user token, answered in JSON, every failure said in one sentence.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::context::{ClusterFleet, Context};
use super::crd::StorageCluster;

/// How long one question to the gateway may take.
pub(super) const QUESTION_DEADLINE: Duration = Duration::from_secs(10);

/// POSTs `question` to `path` of `cluster`'s gateway with `token`; the
/// answer, or why there is none (`what` names the question: "which blobs
/// S3 holds").
pub(super) async fn ask_gateway<Q: Serialize, A: DeserializeOwned>(
    ctx: &Context,
    cluster: &StorageCluster,
    fleet: &ClusterFleet,
    token: &str,
    path: &str,
    question: &Q,
    what: &str,
) -> Result<A, String> {
    let gateway = ctx.endpoints.gateway(cluster);
    let url = format!("{}{path}", gateway.trim_end_matches('/'));
    let sent = fleet
        .gateway_http
        .post(&url)
        .bearer_auth(token)
        .json(question)
        .timeout(QUESTION_DEADLINE)
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
