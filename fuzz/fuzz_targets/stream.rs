//! The PPTP stream parser (`Parser::feed`) under arbitrary cuts of an
//! arbitrary byte stream: what it reports (fields, skipped messages, whole
//! messages, the patches of rewritten fields, where it loses framing) does
//! not depend on how the stream is cut into segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pptp_alg::alg::stream::{FeedError, Item, Parser, Patch};
use pptp_alg::wire::pptp::{HeaderError, Role};

/// The input: 4 bytes of start sequence number, a count `n`, `n` segment
/// lengths, `n` low bytes the handler answers for fields (so that patches
/// are produced and compared too), then the stream (the rest) cut after
/// those lengths; what remains is one last segment.
struct Input<'a> {
    start: u32,
    cuts: &'a [u8],
    answers: &'a [u8],
    stream: &'a [u8],
}

fn input(data: &[u8]) -> Option<Input<'_>> {
    let (head, rest) = data.split_first_chunk::<5>()?;
    let n = usize::from(head[4] % 32);
    if rest.len() < 2 * n {
        return None;
    }
    let (cuts, rest) = rest.split_at(n);
    let (answers, stream) = rest.split_at(n);
    Some(Input {
        start: u32::from_be_bytes([head[0], head[1], head[2], head[3]]),
        cuts,
        answers,
        stream,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    FieldHigh {
        ty: u16,
        role: Role,
        high: u8,
    },
    FieldLow {
        ty: u16,
        role: Role,
        value: u16,
        high_out: u8,
    },
    Skipped {
        ctrl_type: u16,
    },
    Message {
        ty: u16,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, PartialEq, Eq)]
struct Run {
    items: Vec<Owned>,
    patches: Vec<Patch>,
    error: Option<HeaderError>,
    /// Where the parser stands after the last segment it took whole.
    next: Option<u32>,
}

fn run(input: &Input, segments: &[&[u8]]) -> Run {
    let mut p = Parser::new(input.start);
    let mut items = Vec::new();
    let mut patches = Vec::new();
    let mut n = 0usize;
    for seg in segments {
        let res = p.feed::<()>(seg, &mut patches, |item| {
            Ok(match item {
                // Each step of each field is reported once whatever the
                // cuts, so the n-th answer goes to the same step every time.
                Item::FieldHigh { ty, role, high } => {
                    items.push(Owned::FieldHigh {
                        ty: ty as u16,
                        role,
                        high,
                    });
                    let answer = input.answers.get(n % input.answers.len().max(1)).copied();
                    n += 1;
                    answer
                }
                Item::FieldLow {
                    ty,
                    role,
                    value,
                    high_out,
                } => {
                    items.push(Owned::FieldLow {
                        ty: ty as u16,
                        role,
                        value,
                        high_out,
                    });
                    let answer = input.answers.get(n % input.answers.len().max(1)).copied();
                    n += 1;
                    answer
                }
                Item::Skipped { ctrl_type } => {
                    items.push(Owned::Skipped { ctrl_type });
                    None
                }
                Item::Message { ty, bytes } => {
                    assert_eq!(bytes.len(), ty.length());
                    items.push(Owned::Message {
                        ty: ty as u16,
                        bytes: bytes.to_vec(),
                    });
                    None
                }
            })
        });
        match res {
            Ok(()) => {}
            Err(FeedError::Desync(e)) => {
                return Run {
                    items,
                    patches,
                    error: Some(e),
                    next: None,
                }
            }
            Err(FeedError::Handler(())) => unreachable!("the handler never refuses"),
        }
    }
    Run {
        items,
        patches,
        error: None,
        next: Some(p.next),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = input(data) else {
        return;
    };
    let whole = run(&input, &[input.stream]);
    if whole.error.is_none() {
        assert_eq!(
            whole.next,
            Some(input.start.wrapping_add(input.stream.len() as u32))
        );
    }
    let mut segments = Vec::new();
    let mut rest = input.stream;
    for &c in input.cuts {
        let n = usize::from(c).min(rest.len());
        let (a, b) = rest.split_at(n);
        segments.push(a);
        rest = b;
    }
    segments.push(rest);
    let cut = run(&input, &segments);
    assert_eq!(whole, cut, "cuts {:?}", input.cuts);
});
