//! A gRPC codec that passes messages through as bytes, so the gateway forwards any method of any
//! service without decoding it.

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The value of field 1 when it is a length-delimited string at the start of an encoded message:
/// every per-host request carries `string host = 1` (proto/CONVENTIONS.md), and protobuf encoders
/// write fields in number order. None when absent or not valid UTF-8.
pub fn leading_host_field(message: &[u8]) -> Option<&str> {
    const FIELD_1_LEN_DELIMITED: u8 = (1 << 3) | 2;
    let (&tag, rest) = message.split_first()?;
    if tag != FIELD_1_LEN_DELIMITED {
        return None;
    }
    let mut len: u64 = 0;
    let mut consumed = 0;
    for (index, byte) in rest.iter().enumerate().take(10) {
        len |= u64::from(byte & 0x7f) << (7 * index);
        consumed = index + 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let len = usize::try_from(len).ok()?;
    let value = rest.get(consumed..consumed.checked_add(len)?)?;
    std::str::from_utf8(value).ok()
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use vireo_proto::compute::v1::{GetFreeCellsRequest, GetNodeInfoRequest};

    use super::leading_host_field;

    #[test]
    fn reads_the_host_field_of_real_messages() {
        let long_name = "h".repeat(300);
        let encoded = GetFreeCellsRequest {
            host: long_name.clone(),
            cell: Some(1),
        }
        .encode_to_vec();
        assert_eq!(leading_host_field(&encoded), Some(long_name.as_str()));
        let encoded = GetNodeInfoRequest {
            host: String::new(),
        }
        .encode_to_vec();
        assert_eq!(leading_host_field(&encoded), None);
        let encoded = GetFreeCellsRequest {
            host: String::new(),
            cell: Some(1),
        }
        .encode_to_vec();
        assert_eq!(leading_host_field(&encoded), None);
        assert_eq!(leading_host_field(&[0x0a, 0x05, b'a']), None, "truncated");
        assert_eq!(
            leading_host_field(&[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]),
            None
        );
    }
}
