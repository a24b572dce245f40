//! Bad input gets a clear status and message, and nothing reaches the log.

mod common;

use common::*;
use proofgate::pb::{GetApplicationRequest, IdType, WatchApplicationRequest};
use tonic::Code;

async fn refused(gw: &TestGateway, req: proofgate::pb::SubmitApplicationRequest) -> tonic::Status {
    let before = gw.tree_size();
    let status = gw
        .applications()
        .submit_application(req)
        .await
        .expect_err("request must be refused");
    assert_eq!(gw.tree_size(), before, "a refused request writes nothing");
    status
}

#[tokio::test]
async fn unknown_matter_is_not_found() {
    let gw = TestGateway::start().await;
    let status = refused(&gw, request("no-such-matter", PASSES_ALL)).await;
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("no-such-matter"));
    assert!(status.message().contains("ListMatters"));
}

#[tokio::test]
async fn malformed_and_wrong_checksum_id_numbers_are_invalid() {
    let gw = TestGateway::start().await;
    for (number, expected) in [
        ("330702199001011234", "check character"),
        ("33070219900101123", "18 characters"),
        ("33070219900101123Y", "character 18"),
        ("330702199002301236", "birth date"),
    ] {
        let status = refused(&gw, request("elderly-subsidy", number)).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{number}");
        assert!(
            status.message().contains("applicant.id_number"),
            "{}",
            status.message()
        );
        assert!(status.message().contains(expected), "{}", status.message());
        assert!(!status.message().contains(number), "personal data echoed");
    }
    let mut req = request("business-change", "91330702MA28K00073");
    req.applicant.as_mut().unwrap().id_type = IdType::UnifiedSocialCreditCode as i32;
    let status = refused(&gw, req).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("GB 32100"));
}

#[tokio::test]
async fn empty_fields_are_named() {
    let gw = TestGateway::start().await;
    let mut req = request("elderly-subsidy", ELDERLY);
    req.request_id.clear();
    req.officer = None;
    req.applicant.as_mut().unwrap().name = "   ".into();
    req.applicant.as_mut().unwrap().id_type = 0;
    let status = refused(&gw, req).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    for field in [
        "request_id",
        "officer",
        "applicant.name",
        "applicant.id_type",
    ] {
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn unknown_enum_values_and_unknown_commitment_proofs_are_refused() {
    let gw = TestGateway::start().await;
    let mut req = request("elderly-subsidy", ELDERLY);
    req.applicant.as_mut().unwrap().id_type = 7;
    let status = refused(&gw, req).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("unknown value 7"));

    let req = with_commitments(
        request("elderly-subsidy", ELDERLY),
        &[("no-such-proof", "v1")],
    );
    let status = refused(&gw, req).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("no-such-proof"));
}

#[tokio::test]
async fn oversize_requests_are_refused() {
    let gw = TestGateway::start().await;
    // Within the transport limit: refused by validation, with the field named.
    let mut req = request("elderly-subsidy", ELDERLY);
    req.applicant.as_mut().unwrap().name = "名".repeat(1000);
    let status = refused(&gw, req).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("applicant.name"));
    let req = with_commitments(
        request("elderly-subsidy", ELDERLY),
        &[("income-statement", "income-v1"); 1]
            .iter()
            .cycle()
            .take(65)
            .copied()
            .collect::<Vec<_>>(),
    );
    let status = refused(&gw, req).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("at most 64 commitments"));
    // Past the transport limit: refused before decoding.
    let mut req = request("elderly-subsidy", ELDERLY);
    req.applicant.as_mut().unwrap().name = "x".repeat(200 * 1024);
    let status = refused(&gw, req).await;
    assert_ne!(status.code(), Code::Ok);
    assert!(
        status.message().contains("message length too large"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn unknown_application_ids_are_not_found() {
    let gw = TestGateway::start().await;
    let status = gw
        .applications()
        .get_application(GetApplicationRequest {
            application_id: "test-node.000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = gw
        .applications()
        .watch_application(WatchApplicationRequest {
            application_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn invalid_argument_carries_one_bad_request_violation_per_bad_field() {
    use tonic_types::StatusExt;
    let gw = TestGateway::start().await;
    let mut req = request("elderly-subsidy", ELDERLY);
    req.request_id.clear();
    req.officer = None;
    req.applicant.as_mut().unwrap().name = "   ".into();
    let status = refused(&gw, req).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    // tonic moves the `grpc-status-details-bin` trailer into `details()`.
    assert!(
        !status.details().is_empty(),
        "no grpc-status-details-bin trailer"
    );
    let bad = status
        .get_details_bad_request()
        .expect("google.rpc.BadRequest details");
    let mut fields: Vec<&str> = bad
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["applicant.name", "officer", "request_id"]);
    assert!(bad
        .field_violations
        .iter()
        .all(|v| !v.description.is_empty()));
}
