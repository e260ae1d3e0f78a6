//! The HTTP API (`refstream serve`) over real HTTP against a real Postgres: every endpoint in the
//! OpenAPI document needs a token (401 without, 403 with the wrong role) except the public
//! ones; the document validates with an independent validator (Python's
//! openapi-spec-validator); a reviewer's approval is recorded with its `ReviewDecided` and an
//! audit row; a client token sees its own user's code, referrals and rewards and nobody else's;
//! errors are RFC 9457 problems; revoked and expired tokens stop working.

use std::path::PathBuf;
use std::process::Command;

use refstream_e2e::api::{json, token, Api};
use refstream_e2e::{bin, TestDb};
use serde_json::{json, Value as Json};
use sqlx::PgPool;
use uuid::Uuid;

/// The routes anyone may call: they hold no data.
const PUBLIC: [&str; 4] = ["/", "/dashboard", "/healthz", "/openapi.json"];

/// Users ana and dan with codes; ana referred bea (held for review) and cid (rewarded 10 USD);
/// dan referred eve (pending). Returns the held referral's id.
async fn seed(pool: &PgPool) -> Uuid {
    for (user, platform) in [("ana", "web"), ("bea", "ios"), ("cid", "android"), ("dan", "web"), ("eve", "web")] {
        sqlx::query(
            "INSERT INTO users (user_id, registered_at, platform, email_domain) VALUES ($1, now() - interval '1 day', $2, 'example.org')",
        )
        .bind(user)
        .bind(platform)
        .execute(pool)
        .await
        .unwrap();
    }
    for (user, code) in [("ana", "ANA0CODE"), ("dan", "DAN0CODE")] {
        sqlx::query("INSERT INTO referral_codes (code, user_id, campaign_id, created_at) VALUES ($1, $2, 'default', now())")
            .bind(code)
            .bind(user)
            .execute(pool)
            .await
            .unwrap();
    }
    let held = Uuid::new_v4();
    let rewarded = Uuid::new_v4();
    for (id, referrer, referee, code, status) in [
        (held, "ana", "bea", "ANA0CODE", "held"),
        (rewarded, "ana", "cid", "ANA0CODE", "rewarded"),
        (Uuid::new_v4(), "dan", "eve", "DAN0CODE", "pending"),
    ] {
        sqlx::query(
            "INSERT INTO referrals (referral_id, referrer_id, referee_id, code, campaign_id, attribution, referee_registered_at, status) \
             VALUES ($1, $2, $3, $4, 'default', 'CODE', now() - interval '1 day', $5)",
        )
        .bind(id)
        .bind(referrer)
        .bind(referee)
        .bind(code)
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO referral_transitions (referral_id, from_status, to_status, cause) VALUES ($1, 'pending', 'held', 'score 55 REVIEW')",
    )
    .bind(held)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO deposits (deposit_id, user_id, amount, currency, occurred_at) VALUES ('dep-cid', 'cid', 25, 'USD', now())")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO rewards (reward_id, referral_id, reward_type, beneficiary_id, role, amount, currency, campaign_id, qualifying_deposit_id) \
         VALUES ($1, $2, 'referrer_bonus', 'ana', 'REFERRER', 10, 'USD', 'default', 'dep-cid')",
    )
    .bind(Uuid::new_v4())
    .bind(rewarded)
    .execute(pool)
    .await
    .unwrap();
    held
}

/// Every operation of the document: (method, path with its parameters filled, secured).
fn operations(doc: &Json, referral: Uuid) -> Vec<(String, String, bool)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let secured = op.get("security").and_then(Json::as_array).is_some_and(|s| !s.is_empty());
            let target = path.replace("{referral_id}", &referral.to_string()).replace("{id}", "1");
            ops.push((method.to_uppercase(), target, secured));
        }
    }
    ops
}

fn assert_problem(r: &refstream_e2e::HttpResponse, status: u16, what: &str) -> Json {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"), "{what}: {r:?}");
    let body = json(r);
    assert_eq!(body["status"], status, "{what}: {body}");
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(), "{what}: {body}");
    body
}

/// The Python interpreter of the venv `make test` prepares with openapi-spec-validator.
fn validator_python() -> PathBuf {
    let venv = std::env::var("REFSTREAM_API_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/api-venv"));
    let python = venv.join("bin/python");
    assert!(python.exists(), "{} missing: run `make test` (scripts/test.sh installs openapi-spec-validator there)", python.display());
    python
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_needs_a_token_and_its_role_and_the_document_validates() {
    let db = TestDb::new().await;
    let held = seed(&db.pool).await;
    let api = Api::start(&db.url, &[]);
    let viewer = token(&db.url, "viewer", "vera", None);
    let reviewer = token(&db.url, "reviewer", "rui", None);

    // The document: OpenAPI 3.1, valid for an independent validator.
    let r = api.call("GET", "/openapi.json", None, None);
    assert_eq!(r.status, 200, "{r:?}");
    let doc = json(&r);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    let file = std::env::temp_dir().join(format!("refstream-openapi-{}.json", Uuid::new_v4().simple()));
    std::fs::write(&file, &r.body).unwrap();
    let out = Command::new(validator_python())
        .args([
            "-c",
            "import sys, json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')",
        ])
        .arg(&file)
        .output()
        .expect("run the validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same document as `refstream openapi` prints.
    let printed = Command::new(bin("refstream")).arg("openapi").env("REFSTREAM__DEV_MODE", "true").output().unwrap();
    assert_eq!(serde_json::from_slice::<Json>(&printed.stdout).unwrap(), doc);

    let ops = operations(&doc, held);
    assert!(ops.len() >= 18, "{ops:?}");
    let public: Vec<&str> = ops.iter().filter(|(_, _, s)| !s).map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(public, PUBLIC.to_vec(), "only these routes are public");
    for (method, path, secured) in &ops {
        if !secured {
            let r = api.call(method, path, None, None);
            assert!(r.status == 200 || r.status == 303, "{method} {path}: {r:?}");
            continue;
        }
        let body = (method == "POST").then(|| json!({ "reason": "x" }));
        let r = api.call(method, path, None, body.as_ref());
        assert_problem(&r, 401, &format!("{method} {path} without a token"));
        assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")), "{method} {path}: {r:?}");
        let forged = format!("rst_{}", "0".repeat(64));
        assert_problem(&api.call(method, path, Some(&forged), body.as_ref()), 401, &format!("{method} {path} with an unknown token"));
        assert_problem(&api.call(method, path, Some("not-a-token"), body.as_ref()), 401, &format!("{method} {path} with garbage"));
    }

    // A viewer reads the admin side and is refused every action and every client endpoint.
    for path in ["/v1/admin/summary", "/v1/admin/funnel", "/v1/admin/leaderboard", "/v1/admin/reviews", "/v1/admin/dead-letters"] {
        let r = api.call("GET", path, Some(&viewer), None);
        assert_eq!(r.status, 200, "viewer GET {path}: {r:?}");
    }
    let r = api.call("GET", &format!("/v1/admin/referrals/{held}"), Some(&viewer), None);
    assert_eq!(json(&r)["referral"]["status"], "held", "{r:?}");
    // Campaigns, read-only: the one applied with the command line, its version and state.
    let file = format!("{}/../deploy/campaigns/ios-launch.toml", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(bin("refstream")).args(["campaigns", "apply", &file]).env("REFSTREAM__DATABASE__URL", &db.url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let campaigns = json(&api.call("GET", "/v1/admin/campaigns", Some(&viewer), None));
    assert_eq!(
        (campaigns[0]["campaign_id"].as_str(), campaigns[0]["version"].as_i64(), campaigns[0]["active"].as_bool()),
        (Some("ios-launch"), Some(1), Some(true)),
        "{campaigns}"
    );
    assert_eq!(campaigns[0]["definition"]["rewards"][0]["amount"], "15.00");
    assert_eq!(json(&api.call("GET", "/v1/admin/campaigns/ios-launch", Some(&viewer), None)).as_array().map(Vec::len), Some(1));
    assert_problem(&api.call("GET", "/v1/admin/campaigns/nope", Some(&viewer), None), 404, "unknown campaign");
    let summary = json(&api.call("GET", "/v1/admin/summary", Some(&viewer), None));
    assert_eq!(
        (summary["users"].as_i64(), summary["referrals"].as_i64(), summary["rewards_granted"].as_i64()),
        (Some(5), Some(3), Some(1))
    );
    for (method, path) in [
        ("POST", format!("/v1/admin/reviews/{held}/approve")),
        ("POST", format!("/v1/admin/reviews/{held}/reject")),
        ("POST", "/v1/admin/dead-letters/1/replay".to_owned()),
        ("POST", "/v1/admin/client-tokens".to_owned()),
        ("GET", "/v1/admin/actions".to_owned()),
        ("GET", "/v1/me/code".to_owned()),
        ("GET", "/v1/me/referrals".to_owned()),
        ("GET", "/v1/me/rewards".to_owned()),
    ] {
        let body = json!({ "reason": "looks fine", "user_id": "ana" });
        let body = (method == "POST").then_some(&body);
        assert_problem(&api.call(method, &path, Some(&viewer), body), 403, &format!("viewer {method} {path}"));
    }
    // Nothing a viewer tried was recorded.
    let decisions: i64 = sqlx::query_scalar("SELECT count(*) FROM review_decisions").fetch_one(&db.pool).await.unwrap();
    assert_eq!(decisions, 0);

    // A reviewer may decide reviews but not replay, issue client tokens or read the audit log.
    for (method, path) in [("POST", "/v1/admin/dead-letters/1/replay"), ("POST", "/v1/admin/client-tokens"), ("GET", "/v1/admin/actions")] {
        let body = json!({ "user_id": "ana" });
        let body = (method == "POST").then_some(&body);
        assert_problem(&api.call(method, path, Some(&reviewer), body), 403, &format!("reviewer {method} {path}"));
    }
    // Unknown routes and methods are problems too; answers are never cached.
    assert_problem(&api.call("GET", "/v1/nothing-here", Some(&viewer), None), 404, "unknown route");
    assert_problem(&api.call("DELETE", "/v1/admin/summary", Some(&viewer), None), 405, "wrong method");
    let r = api.call("GET", &format!("/v1/admin/referrals/{held}"), Some(&viewer), None);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(!r.body.contains('@'), "no email in explain: {}", r.body);

    // A reviewer approves: the decision, its ReviewDecided in the outbox and the audit row.
    let approve = format!("/v1/admin/reviews/{held}/approve");
    assert_problem(&api.call("POST", &approve, Some(&reviewer), Some(&json!({ "reason": " " }))), 400, "blank reason");
    assert_problem(&api.call("POST", &approve, Some(&reviewer), Some(&json!({ "reason": "ok", "extra": 1 }))), 400, "unknown field");
    assert_problem(&api.call("POST", &approve, Some(&reviewer), Some(&json!({ "why": "ok" }))), 400, "missing field");
    let r = refstream_e2e::http(
        api.port,
        "POST",
        &approve,
        &[("Authorization", &format!("Bearer {reviewer}")), ("Content-Type", "application/json")],
        b"{not json",
    );
    assert_problem(&r, 400, "malformed JSON");
    let r = refstream_e2e::http(
        api.port,
        "POST",
        &approve,
        &[("Authorization", &format!("Bearer {reviewer}")), ("Content-Type", "text/plain")],
        b"{}",
    );
    assert_problem(&r, 415, "not JSON");
    let huge = json!({ "reason": "x".repeat(20_000) });
    assert_problem(&api.call("POST", &approve, Some(&reviewer), Some(&huge)), 413, "a body over api.max_body_bytes");
    assert_problem(
        &api.call("POST", "/v1/admin/reviews/not-a-uuid/approve", Some(&reviewer), Some(&json!({ "reason": "ok" }))),
        400,
        "bad id",
    );
    let unknown = format!("/v1/admin/reviews/{}/approve", Uuid::new_v4());
    assert_problem(&api.call("POST", &unknown, Some(&reviewer), Some(&json!({ "reason": "ok" }))), 404, "unknown referral");

    let r = api.call("POST", &approve, Some(&reviewer), Some(&json!({ "reason": "same household, verified by phone" })));
    assert_eq!(r.status, 201, "{r:?}");
    let decided = json(&r);
    assert_eq!((decided["decision"].as_str(), decided["reviewer"].as_str()), (Some("APPROVE"), Some("api:rui")));
    let (decision, by): (String, String) = sqlx::query_as("SELECT decision, reviewer FROM review_decisions WHERE referral_id = $1")
        .bind(held)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((decision.as_str(), by.as_str()), ("APPROVE", "api:rui"));
    let outbox: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'review-decided' AND key = 'bea'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(outbox, 1, "the decision's ReviewDecided is in the outbox");
    let audit: (String, String, String) =
        sqlx::query_as("SELECT token_name, action, target FROM api_admin_actions ORDER BY id DESC LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(audit, ("rui".to_owned(), "review.approve".to_owned(), held.to_string()));
    // One decision per hold.
    assert_problem(&api.call("POST", &approve, Some(&reviewer), Some(&json!({ "reason": "again" }))), 409, "second decision");

    // Revoked and expired tokens stop working.
    let out =
        Command::new(bin("refstream")).args(["api-token", "revoke", "vera"]).env("REFSTREAM__DATABASE__URL", &db.url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_problem(&api.call("GET", "/v1/admin/summary", Some(&viewer), None), 401, "revoked token");
    sqlx::query("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = 'rui'").execute(&db.pool).await.unwrap();
    assert_problem(&api.call("GET", "/v1/admin/summary", Some(&reviewer), None), 401, "expired token");
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM api_tokens").fetch_all(&db.pool).await.unwrap();
    assert!(stored.iter().all(|h| h.len() == 32 && !String::from_utf8_lossy(h).contains("rst_")), "only hashes are stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_token_sees_its_own_user_and_nobody_else() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    let api = Api::start(&db.url, &[("REFSTREAM__API__SHARE_BASE_URL".to_owned(), "https://r.example.com".to_owned())]);
    let admin = token(&db.url, "admin", "ops-admin", None);
    let issuer = token(&db.url, "issuer", "ops-backend", None);
    // An issuer mints client tokens and can do nothing else.
    assert_problem(&api.call("GET", "/v1/admin/summary", Some(&issuer), None), 403, "issuer reads");
    assert_problem(&api.call("GET", "/v1/admin/actions", Some(&issuer), None), 403, "issuer audit log");

    assert_problem(&api.call("POST", "/v1/admin/client-tokens", Some(&admin), Some(&json!({ "user_id": "nobody" }))), 400, "unknown user");
    assert_problem(
        &api.call("POST", "/v1/admin/client-tokens", Some(&admin), Some(&json!({ "user_id": "ana", "ttl_secs": 5 }))),
        400,
        "ttl",
    );
    let r = api.call("POST", "/v1/admin/client-tokens", Some(&issuer), Some(&json!({ "user_id": "ana", "ttl_secs": 3600 })));
    assert_eq!(r.status, 201, "{r:?}");
    let ana = json(&r)["token"].as_str().unwrap().to_owned();

    let code = json(&api.call("GET", "/v1/me/code", Some(&ana), None));
    assert_eq!(code["code"], "ANA0CODE");
    assert_eq!(code["share_link"], "https://r.example.com/r/ANA0CODE");
    let r = api.call("GET", "/v1/me/referrals", Some(&ana), None);
    let referrals = json(&r);
    let statuses: Vec<&str> = referrals.as_array().unwrap().iter().map(|x| x["status"].as_str().unwrap()).collect();
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["held", "rewarded"], "{referrals}");
    assert!(!r.body.contains("bea") && !r.body.contains("cid") && !r.body.contains("eve"), "no other user's id: {}", r.body);
    assert!(!r.body.contains('@'), "no email: {}", r.body);
    let earned: Vec<&Json> = referrals.as_array().unwrap().iter().flat_map(|x| x["earned"].as_array().unwrap()).collect();
    assert_eq!(earned.len(), 1, "{referrals}");
    assert_eq!((earned[0]["amount"].as_str(), earned[0]["currency"].as_str()), (Some("10.0000"), Some("USD")));
    // No referral or reward id either: they are derived from the referee's user id.
    let ids: Vec<String> = sqlx::query_scalar("SELECT referral_id::text FROM referrals UNION ALL SELECT reward_id::text FROM rewards")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    for id in &ids {
        assert!(!r.body.contains(id.as_str()), "a derived id in the client's referrals: {}", r.body);
    }
    let r = api.call("GET", "/v1/me/rewards", Some(&ana), None);
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    for id in &ids {
        assert!(!r.body.contains(id.as_str()), "a derived id in the client's rewards: {}", r.body);
    }
    let rewards = json(&r);
    assert_eq!(rewards.as_array().unwrap().len(), 1, "{rewards}");
    assert_eq!((rewards[0]["amount"].as_str(), rewards[0]["currency"].as_str()), (Some("10.0000"), Some("USD")));
    assert_eq!((rewards[0]["kind"].as_str(), rewards[0]["level"].as_i64()), (Some("CASH"), Some(1)), "{rewards}");

    // dan's client token sees dan's referral only; a client token is not staff.
    let dan = token(&db.url, "client", "dan-app", Some("dan"));
    let r = api.call("GET", "/v1/me/referrals", Some(&dan), None);
    assert!(!r.body.contains("eve") && !r.body.contains("ana"), "{}", r.body);
    let mine = json(&r);
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(json(&api.call("GET", "/v1/me/rewards", Some(&dan), None)).as_array().unwrap().len(), 0);
    assert_problem(&api.call("GET", "/v1/admin/summary", Some(&ana), None), 403, "client on admin");
    assert_problem(&api.call("GET", "/v1/me/code", Some(&admin), None), 403, "staff on client");

    // The issuing is on the record.
    let r = api.call("GET", "/v1/admin/actions", Some(&admin), None);
    let actions = json(&r);
    assert_eq!(actions[0]["action"], "client_token.create", "{actions}");
    assert_eq!(actions[0]["target"], "ana");
    assert_eq!(actions[0]["token_name"], "ops-backend");
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE role = 'client' AND user_id = 'ana' AND created_by = 'api:ops-backend'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(created, 1);
}
