//! Checksums of Chinese identity numbers.
//!
//! Both standards put a check character last, so a typo in any one position is
//! caught before a department is asked about a person who does not exist.

use thiserror::Error;

/// Why an ID number was refused. Messages never repeat the number itself:
/// it is personal data and errors end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdNumberError {
    #[error("must be 18 characters, got {0}")]
    Length(usize),
    #[error("character {position} is not allowed there")]
    Character { position: usize },
    #[error("birth date is not a real calendar date")]
    BirthDate,
    #[error("check character does not match (mistyped digit?)")]
    Checksum,
}

/// The facts a resident ID number carries, read from its layout
/// (6-digit region, YYYYMMDD birth date, 3-digit sequence, check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentId {
    pub region: u32,
    pub birth_year: u16,
    pub birth_month: u8,
    pub birth_day: u8,
    /// Odd sequence numbers are men, even ones women.
    pub male: bool,
}

impl ResidentId {
    /// Full years of age on the given date.
    pub fn age_on(&self, year: u16, month: u8, day: u8) -> i64 {
        let mut age = i64::from(year) - i64::from(self.birth_year);
        if (month, day) < (self.birth_month, self.birth_day) {
            age -= 1;
        }
        age
    }
}

/// GB 11643-1999 weights, 2^(17-i) mod 11.
const RESIDENT_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const RESIDENT_CHECK: &[u8; 11] = b"10X98765432";

/// Validates an 18-character resident ID (MOD 11-2 check, real birth date).
pub fn check_resident_id(number: &str) -> Result<ResidentId, IdNumberError> {
    let bytes = number.as_bytes();
    if bytes.len() != 18 {
        return Err(IdNumberError::Length(number.chars().count()));
    }
    let mut digits = [0u32; 17];
    for (position, &b) in bytes[..17].iter().enumerate() {
        if !b.is_ascii_digit() {
            return Err(IdNumberError::Character {
                position: position + 1,
            });
        }
        digits[position] = u32::from(b - b'0');
    }
    let last = bytes[17].to_ascii_uppercase();
    if !(last.is_ascii_digit() || last == b'X') {
        return Err(IdNumberError::Character { position: 18 });
    }
    let sum: u32 = digits
        .iter()
        .zip(RESIDENT_WEIGHTS)
        .map(|(d, w)| d * w)
        .sum();
    if RESIDENT_CHECK[(sum % 11) as usize] != last {
        return Err(IdNumberError::Checksum);
    }
    let number_at =
        |range: std::ops::Range<usize>| digits[range].iter().fold(0u32, |acc, d| acc * 10 + d);
    let year = number_at(6..10);
    let month = number_at(10..12);
    let day = number_at(12..14);
    if !(1800..=2100).contains(&year) || !is_real_date(year, month, day) {
        return Err(IdNumberError::BirthDate);
    }
    Ok(ResidentId {
        region: number_at(0..6),
        birth_year: year as u16,
        birth_month: month as u8,
        birth_day: day as u8,
        male: digits[16] % 2 == 1,
    })
}

fn is_real_date(year: u32, month: u32, day: u32) -> bool {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days_in_month).contains(&day)
}

/// Checks an ID number by the standard its type names. An unspecified type
/// has no standard to check against and is the caller's to refuse.
pub fn check_id(id_type: crate::pb::IdType, number: &str) -> Result<(), IdNumberError> {
    use crate::pb::IdType;
    match id_type {
        IdType::ResidentId => check_resident_id(number).map(|_| ()),
        IdType::UnifiedSocialCreditCode => check_unified_social_credit_code(number),
        IdType::Unspecified => Ok(()),
    }
}

/// GB 32100-2015 alphabet: digits and capitals without I, O, S, V, Z.
const USCC_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
/// 3^(i-1) mod 31.
const USCC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// Validates an 18-character unified social credit code (MOD 31 check).
pub fn check_unified_social_credit_code(code: &str) -> Result<(), IdNumberError> {
    let bytes = code.as_bytes();
    if bytes.len() != 18 {
        return Err(IdNumberError::Length(code.chars().count()));
    }
    let value_of = |position: usize| {
        USCC_ALPHABET
            .iter()
            .position(|&c| c == bytes[position].to_ascii_uppercase())
            .map(|v| v as u32)
            .ok_or(IdNumberError::Character {
                position: position + 1,
            })
    };
    let mut sum = 0u32;
    for (position, weight) in USCC_WEIGHTS.iter().enumerate() {
        sum += value_of(position)? * weight;
    }
    let expected = (31 - sum % 31) % 31;
    if value_of(17)? != expected {
        return Err(IdNumberError::Checksum);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn standard_examples_of_resident_ids_pass() {
        for valid in [
            "11010519491231002X",
            "440524188001010014",
            "360426199101010071",
            "330702199001011237",
            "330782198506150029",
        ] {
            assert!(check_resident_id(valid).is_ok(), "{valid} should pass");
        }
        let id = check_resident_id("330782198506150029").unwrap();
        assert!(!id.male);
        assert_eq!(id.region, 330782);
        assert_eq!(id.age_on(2026, 6, 14), 40);
        assert_eq!(id.age_on(2026, 6, 15), 41);
    }

    #[test]
    fn wrong_check_digit_and_impossible_dates_are_refused() {
        assert_eq!(
            check_resident_id("330702199001011234"),
            Err(IdNumberError::Checksum)
        );
        assert_eq!(
            check_resident_id("330702199002301236"),
            Err(IdNumberError::BirthDate)
        );
        assert_eq!(
            check_resident_id("3307021990"),
            Err(IdNumberError::Length(10))
        );
        assert_eq!(
            check_resident_id("33070219900101123A"),
            Err(IdNumberError::Character { position: 18 })
        );
        assert_eq!(
            check_resident_id("身份证号码身份"),
            Err(IdNumberError::Length(7))
        );
    }

    #[test]
    fn standard_examples_of_credit_codes_pass() {
        for valid in [
            "91110000600037341L",
            "91350100M000100Y43",
            "91440101MA5CJQ4N59",
            "91350200776049653A",
            "913502000728319549",
            "91330702MA28K00072",
            "92330702MA2HQ1238M",
        ] {
            assert!(
                check_unified_social_credit_code(valid).is_ok(),
                "{valid} should pass"
            );
        }
        for invalid in ["91310115MA1H8R7C6D", "91310115MA1G4L1WXK"] {
            assert_eq!(
                check_unified_social_credit_code(invalid),
                Err(IdNumberError::Checksum),
                "{invalid}"
            );
        }
        // The standard's printed example ends in Z, which the alphabet lacks.
        assert_eq!(
            check_unified_social_credit_code("91350100M000100Y4Z"),
            Err(IdNumberError::Character { position: 18 })
        );
        assert_eq!(
            check_unified_social_credit_code("9111000060003734IL"),
            Err(IdNumberError::Character { position: 17 })
        );
    }

    fn resident_check_char(first17: &str) -> char {
        let sum: u32 = first17
            .bytes()
            .zip(RESIDENT_WEIGHTS)
            .map(|(b, w)| u32::from(b - b'0') * w)
            .sum();
        RESIDENT_CHECK[(sum % 11) as usize] as char
    }

    proptest! {
        #[test]
        fn every_generated_valid_id_passes_and_every_single_digit_typo_fails(
            region in 110000u32..660000,
            year in 1900u32..2100,
            month in 1u32..=12,
            day in 1u32..=28,
            seq in 0u32..1000,
            typo_at in 0usize..17,
            typo_delta in 1u32..10,
        ) {
            let first17 = format!("{region:06}{year:04}{month:02}{day:02}{seq:03}");
            let id = format!("{first17}{}", resident_check_char(&first17));
            prop_assert!(check_resident_id(&id).is_ok());
            prop_assert!(check_resident_id(&id.to_lowercase()).is_ok());

            // MOD 11-2 detects every single-character substitution.
            let mut typo = id.clone().into_bytes();
            typo[typo_at] = b'0' + ((u32::from(typo[typo_at] - b'0') + typo_delta) % 10) as u8;
            let typo = String::from_utf8(typo).unwrap();
            prop_assert!(check_resident_id(&typo).is_err());
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = check_resident_id(&s);
            let _ = check_unified_social_credit_code(&s);
        }

        #[test]
        fn the_full_weighted_sum_of_a_valid_resident_id_is_one_mod_11(
            first17 in "[0-9]{17}",
        ) {
            let check = resident_check_char(&first17);
            let value = |c: char| if c == 'X' { 10 } else { c.to_digit(10).unwrap() };
            let sum: u32 = first17
                .chars()
                .zip(RESIDENT_WEIGHTS)
                .map(|(c, w)| value(c) * w)
                .sum::<u32>()
                + value(check);
            prop_assert_eq!(sum % 11, 1);
        }
    }
}
