//! A proptest fuzz harness for request handling: arbitrary bytes decoded as
//! requests, and arbitrary (often hostile) submissions sent to a real gateway
//! over mutual TLS. Nothing panics, every refusal is a clear client error,
//! and nothing refused reaches the log.

mod common;

use common::*;
use proofgate::gateway::check_submission;
use proofgate::pb::{Commitment, Officer, Subject, SubmitApplicationRequest};
use proptest::prelude::*;
use prost::Message;
use tonic::Code;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9-]{1,20}",
        "\\PC{0,80}",
        "[0-9X]{15,19}",
        Just("330702194005050628".to_owned()),
        Just("x".repeat(300)),
    ]
}

fn submission() -> impl Strategy<Value = SubmitApplicationRequest> {
    (
        text(),
        prop_oneof![
            Just("elderly-subsidy".to_owned()),
            Just("hpf-withdrawal-mortgage".to_owned()),
            text()
        ],
        proptest::option::of((text(), prop_oneof![Just("hall-wucheng".to_owned()), text()])),
        proptest::option::of((-3i32..6, text(), text())),
        proptest::collection::vec((text(), text(), any::<i64>()), 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(request_id, matter_id, officer, applicant, commitments, consent)| {
                SubmitApplicationRequest {
                    request_id,
                    matter_id,
                    officer: officer.map(|(officer_id, hall_id)| Officer {
                        officer_id,
                        hall_id,
                    }),
                    applicant: applicant.map(|(id_type, id_number, name)| Subject {
                        id_type,
                        id_number,
                        name,
                    }),
                    commitments: commitments
                        .into_iter()
                        .map(|(proof_id, text_version, accepted_at_unix_ms)| Commitment {
                            proof_id,
                            text_version,
                            accepted_at_unix_ms,
                        })
                        .collect(),
                    consent_to_data_queries: consent,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder_or_the_checks(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = SubmitApplicationRequest::decode(bytes.as_slice()) {
            let _ = check_submission(&request, 1_800_000_000_000);
        }
    }
}

#[test]
fn hostile_submissions_get_client_errors_and_leave_no_trace() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let gw = runtime.block_on(TestGateway::start());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(150));
    runner
        .run(&submission(), |request| {
            runtime.block_on(async {
                let before = gw.tree_size();
                match gw.applications().submit_application(request).await {
                    Ok(reply) => {
                        prop_assert!(reply.into_inner().application.is_some());
                    }
                    Err(status) => {
                        prop_assert!(
                            matches!(
                                status.code(),
                                Code::InvalidArgument
                                    | Code::NotFound
                                    | Code::AlreadyExists
                                    | Code::PermissionDenied
                                    | Code::OutOfRange
                            ),
                            "unexpected {:?}: {}",
                            status.code(),
                            status.message()
                        );
                        prop_assert!(!status.message().is_empty());
                        prop_assert_eq!(gw.tree_size(), before, "a refusal wrote to the log");
                    }
                }
                Ok(())
            })
        })
        .unwrap();
    runtime.block_on(gw.running.shutdown());
}
