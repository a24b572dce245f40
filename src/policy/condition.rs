//! Conditions in CEL (the Common Expression Language): small, side-effect
//! free, and understood by many tools, so a policy author can test them
//! elsewhere. Evaluation is deterministic; errors never count as "true".

use std::collections::HashMap;
use std::sync::Arc;

use cel::{Context, Env, Program, Value};
use thiserror::Error;

use crate::pb::{field_value, FieldValue};

/// A compiled CEL expression and its source text. Clones share the program.
#[derive(Clone)]
pub struct Condition {
    source: String,
    program: Arc<Program>,
    env: Arc<Env>,
}

#[derive(Debug, Error, PartialEq)]
pub enum ConditionError {
    #[error("condition `{expression}` failed: {message}")]
    Execution { expression: String, message: String },
    #[error("condition `{expression}` gave {got}, not true or false")]
    NotBoolean { expression: String, got: String },
}

/// The variables a condition may read.
#[derive(Default)]
pub struct ConditionInputs<'a> {
    /// The department's record (minimum fields), for data-query conditions.
    pub record: Option<&'a [FieldValue]>,
    pub found: Option<bool>,
    /// Facts about the applicant: `id_type`, `age`, `sex`, `region`.
    pub applicant: Option<Value>,
}

impl Condition {
    /// Compiles `source`, refusing variables outside `allowed`.
    pub(super) fn compile(source: &str, allowed: &[&str], env: &Arc<Env>) -> Result<Self, String> {
        let program = env.compile(source).map_err(|errors| {
            errors
                .errors
                .iter()
                .map(|e| format!("column {}: {}", e.pos.1 + 1, e.msg))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let references = program.references();
        let mut unknown: Vec<&str> = references
            .variables()
            .into_iter()
            .filter(|v| !allowed.contains(v))
            .collect();
        unknown.sort_unstable();
        if !unknown.is_empty() {
            return Err(format!(
                "condition `{source}` uses unknown variable(s) {}; allowed here: {}",
                unknown.join(", "),
                allowed.join(", ")
            ));
        }
        Ok(Self {
            source: source.to_owned(),
            program: Arc::new(program),
            env: Arc::clone(env),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn evaluate(&self, inputs: &ConditionInputs<'_>) -> Result<bool, ConditionError> {
        let mut context = Context::with_env(Arc::clone(&self.env));
        if let Some(record) = inputs.record {
            context.add_variable_from_value("record", record_value(record));
        }
        if let Some(found) = inputs.found {
            context.add_variable_from_value("found", found);
        }
        if let Some(applicant) = &inputs.applicant {
            context.add_variable_from_value("applicant", applicant.clone());
        }
        match self.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(ConditionError::NotBoolean {
                expression: self.source.clone(),
                got: format!("{:?}", other.type_of()),
            }),
            Err(e) => Err(ConditionError::Execution {
                expression: self.source.clone(),
                message: describe(&e),
            }),
        }
    }
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Condition({})", self.source)
    }
}

/// What went wrong, without the values involved: they come from a
/// department's record and the text goes into the log and back to the hall.
fn describe(error: &cel::ExecutionError) -> String {
    use cel::ExecutionError as E;
    match error {
        E::NoSuchKey(key) => format!("the answer has no field `{key}`"),
        E::UndeclaredReference(name) => format!("`{name}` is not available here"),
        E::ValuesNotComparable(..) | E::UnexpectedType { .. } | E::NoSuchOverload(_) => {
            "a field has the wrong type for this comparison".into()
        }
        E::DivisionByZero(_) | E::RemainderByZero(_) | E::Overflow(..) => {
            "arithmetic on the answer failed".into()
        }
        _ => "the condition cannot be evaluated on this answer".into(),
    }
}

fn record_value(record: &[FieldValue]) -> Value {
    let map: HashMap<String, Value> = record
        .iter()
        .map(|field| {
            let value = match &field.value {
                Some(field_value::Value::Text(t)) => Value::from(t.clone()),
                Some(field_value::Value::Integer(i)) => Value::Int(*i),
                Some(field_value::Value::Boolean(b)) => Value::Bool(*b),
                None => Value::Null,
            };
            (field.name.clone(), value)
        })
        .collect();
    Value::from(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Arc<Env> {
        Arc::new(Env::stdlib())
    }

    fn text(name: &str, v: &str) -> FieldValue {
        FieldValue {
            name: name.into(),
            value: Some(field_value::Value::Text(v.into())),
        }
    }

    fn int(name: &str, v: i64) -> FieldValue {
        FieldValue {
            name: name.into(),
            value: Some(field_value::Value::Integer(v)),
        }
    }

    #[test]
    fn conditions_read_record_fields_with_their_types() {
        let c = Condition::compile(
            r#"record.status == "married" && record.months >= 6"#,
            &["record"],
            &env(),
        )
        .unwrap();
        let record = [text("status", "married"), int("months", 12)];
        let inputs = ConditionInputs {
            record: Some(&record),
            ..Default::default()
        };
        assert_eq!(c.evaluate(&inputs), Ok(true));
        let record = [text("status", "married"), int("months", 2)];
        let inputs = ConditionInputs {
            record: Some(&record),
            ..Default::default()
        };
        assert_eq!(c.evaluate(&inputs), Ok(false));
    }

    #[test]
    fn a_missing_field_is_an_error_not_false_or_true() {
        let c = Condition::compile("record.balance > 0", &["record"], &env()).unwrap();
        let inputs = ConditionInputs {
            record: Some(&[]),
            ..Default::default()
        };
        assert!(matches!(
            c.evaluate(&inputs),
            Err(ConditionError::Execution { .. })
        ));
        // A mistyped value is not echoed: it may be personal data.
        let c = Condition::compile("record.name > 3", &["record"], &env()).unwrap();
        let record = [text("name", "张三丰")];
        let inputs = ConditionInputs {
            record: Some(&record),
            ..Default::default()
        };
        let err = c.evaluate(&inputs).unwrap_err().to_string();
        assert!(!err.contains("张三丰"), "{err}");
    }

    #[test]
    fn non_boolean_results_and_unknown_variables_are_refused() {
        let c = Condition::compile("1 + 2", &["record"], &env()).unwrap();
        assert!(matches!(
            c.evaluate(&ConditionInputs::default()),
            Err(ConditionError::NotBoolean { .. })
        ));
        let err = Condition::compile("salary > 3", &["record"], &env()).unwrap_err();
        assert!(err.contains("salary"), "{err}");
        let err = Condition::compile("record.a ==", &["record"], &env()).unwrap_err();
        assert!(err.contains("column"), "{err}");
    }
}
