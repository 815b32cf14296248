//! Generated protobuf and gRPC code of the ONe Loyalty API, the ONe core services and the ONe
//! plugin framework.
#![allow(clippy::pedantic, clippy::nursery, missing_docs)]

/// The encoded file descriptor set of every proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/one_descriptor.bin"));

/// `one.loyalty.v1`: the plugin's own API.
pub mod loyalty {
    pub mod v1 {
        tonic::include_proto!("one.loyalty.v1");
    }
}

/// `one.core.v1`: the ONe core services the plugin calls.
pub mod core {
    pub mod v1 {
        tonic::include_proto!("one.core.v1");
    }
}

/// `one.plugin.v1`: the plugin framework's manifest and registry.
pub mod plugin {
    pub mod v1 {
        tonic::include_proto!("one.plugin.v1");
    }
}

/// The descriptor set with only the services named in `served` (full names such as
/// "one.loyalty.v1.EarnService"), so that reflection lists what this server answers and not the
/// ONe core services it calls. Every message type stays available.
///
/// # Errors
/// The embedded descriptor set does not decode (a build fault).
pub fn served_descriptor_set(
    served: &[&str],
) -> Result<prost_types::FileDescriptorSet, prost::DecodeError> {
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)?;
    for file in &mut set.file {
        let package = file.package().to_owned();
        file.service
            .retain(|service| served.contains(&format!("{package}.{}", service.name()).as_str()));
    }
    Ok(set)
}
