// Wire contract of fmlite-platform.
//
// Every tier (L0 router, L1 shard controller, leaf predictor) implements the same service, so a
// client, L0 and L1 can each call the next tier or a leaf directly. Messages travel in Thrift's
// binary protocol as the body of an HTTP POST to /thrift.

namespace py fmlite

// Largest number of glance ids one predict call may carry. Enforced before any fan-out.
const i32 MAX_GLANCES_PER_REQUEST = 10000

// Largest user id or glance id, in UTF-8 bytes.
const i32 MAX_ID_BYTES = 128

// Per-position flag bits in PredictResponse.flags (one byte per requested position).
// The glance id has no profile: the score is the model's fallback score.
const byte FLAG_UNKNOWN_GLANCE = 1
// The user has no profile: the score comes from the cold-start profile.
const byte FLAG_COLD_START_USER = 2
// Set by an exploration policy that moved this position.
const byte FLAG_EXPLORED = 4

struct PredictRequest {
  // Opaque user id, 1 to MAX_ID_BYTES bytes of UTF-8.
  1: required string user_id,
  // Glance ids to score, in the order the scores come back. Duplicates are scored per position.
  2: required list<string> glance_ids,
  // Caller's id for logs and replay; L0 generates one when it is empty.
  3: optional string request_id,
  // Time budget in milliseconds that is left for this call; each tier passes on what remains.
  4: optional i32 timeout_ms,
  // Model variant; L0 sets it from the traffic split, a direct caller of L1 or a leaf may set it.
  // At L0 it may also name a combined variant of the traffic config.
  5: optional string variant,
  // Unix time in milliseconds from which L0's exploration policy computes glance ages. L0 uses
  // its own clock when it is unset; a replay of a logged request passes the logged value.
  6: optional i64 request_time_ms,
}

struct PredictResponse {
  // One score per requested position, in request order.
  1: required list<double> scores,
  // One byte per position, a bitwise OR of the FLAG_* constants.
  2: required binary flags,
  3: required string model_version,
  4: required string profile_version,
  5: required string variant,
  6: required i32 shard,
  7: required string request_id,
  // Number of positions with FLAG_UNKNOWN_GLANCE.
  8: required i32 unknown_glances,
  9: required bool cold_start_user,
  // Set by L0 for a combined variant: each base variant's scores, in request order.
  10: optional map<string, list<double>> variant_scores,
  // Set by L0 when an exploration policy ran: the scores before the policy, in request order.
  11: optional list<double> scores_before_exploration,
  // Number of positions with FLAG_EXPLORED.
  12: optional i32 explored_positions,
  // Experiment bucket of the user in L0's traffic split.
  13: optional string bucket,
  // Time in Unix milliseconds that the exploration policy used for glance ages.
  14: optional i64 request_time_ms,
  // Version of the glance statistics that the exploration policy used.
  15: optional string glance_stats_version,
}

// The request breaks a documented limit or is malformed. Retrying the same request fails again.
exception InvalidRequest {
  1: required string message,
  // Name of the offending request field.
  2: optional string field,
}

// No replica could answer in time; the same request may succeed later.
exception Unavailable {
  1: required string message,
  // Tier that gave up: "l0", "l1" or "leaf".
  2: optional string tier,
}

// The time budget ran out before the work was done; no scores were computed for the late part.
exception DeadlineExceeded {
  1: required string message,
}

struct HealthResponse {
  // The process is up and its event loop answers.
  1: required bool live,
  // The process takes traffic: models and profiles are loaded and it is not draining.
  2: required bool ready,
  // "ok", "degraded", "loading" or "draining".
  3: required string status,
  // "l0", "l1" or "leaf".
  4: required string tier,
  5: optional string model_version,
  6: optional string profile_version,
  7: optional i32 shard,
  8: optional map<string, string> details,
}

service PredictionService {
  PredictResponse predict(1: PredictRequest request)
    throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: DeadlineExceeded deadline),
  HealthResponse health(),
}
