//! The NVMe completion status the kernel hands back from a passthrough
//! command, and the names of the status codes.
//!
//! The passthrough ioctl returns the 15-bit Status Field of the completion
//! queue entry (without the phase tag) as a positive value:
//! SC in bits 7:0, SCT in bits 10:8, CRD in 12:11, More in 13, DNR in 14.

use std::fmt;

macro_rules! status_codes {
    ($( $code:literal => $variant:ident, $name:literal; )*) => {
        /// A status code (SCT and SC) with a name in the NVMe Base
        /// Specification 2.0, or `Other` for one this crate does not know.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum StatusCode {
            $(
                #[doc = $name]
                $variant,
            )*
            /// A status code without a name here, as `(SCT << 8) | SC`.
            Other(u16),
        }

        impl StatusCode {
            /// Looks up `(SCT << 8) | SC`.
            pub fn from_code(code: u16) -> Self {
                match code {
                    $( $code => StatusCode::$variant, )*
                    other => StatusCode::Other(other),
                }
            }

            /// `(SCT << 8) | SC`.
            pub fn code(self) -> u16 {
                match self {
                    $( StatusCode::$variant => $code, )*
                    StatusCode::Other(c) => c,
                }
            }

            /// The specification's name, if known.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $( StatusCode::$variant => Some($name), )*
                    StatusCode::Other(_) => None,
                }
            }
        }
    };
}

status_codes! {
    // Generic command status (SCT 0).
    0x000 => Success, "Successful Completion";
    0x001 => InvalidOpcode, "Invalid Command Opcode";
    0x002 => InvalidField, "Invalid Field in Command";
    0x003 => CommandIdConflict, "Command ID Conflict";
    0x004 => DataTransferError, "Data Transfer Error";
    0x005 => AbortedPowerLoss, "Commands Aborted due to Power Loss Notification";
    0x006 => InternalError, "Internal Error";
    0x007 => AbortRequested, "Command Abort Requested";
    0x008 => AbortedSqDeletion, "Command Aborted due to SQ Deletion";
    0x009 => AbortedFailedFused, "Command Aborted due to Failed Fused Command";
    0x00A => AbortedMissingFused, "Command Aborted due to Missing Fused Command";
    0x00B => InvalidNamespaceOrFormat, "Invalid Namespace or Format";
    0x00C => CommandSequenceError, "Command Sequence Error";
    0x00F => InvalidSglData, "SGL Data Block Granularity Invalid";
    0x015 => OperationDenied, "Operation Denied";
    0x018 => HostIdInconsistentFormat, "Host Identifier Inconsistent Format";
    0x019 => KeepAliveTimerExpired, "Keep Alive Timer Expired";
    0x01A => KeepAliveTimeoutInvalid, "Keep Alive Timeout Invalid";
    0x01B => AbortedPreemptAndAbort, "Command Aborted due to Preempt and Abort";
    0x01C => SanitizeFailed, "Sanitize Failed";
    0x01D => SanitizeInProgress, "Sanitize In Progress";
    0x020 => NamespaceWriteProtected, "Namespace is Write Protected";
    0x021 => CommandInterrupted, "Command Interrupted";
    0x022 => TransientTransportError, "Transient Transport Error";
    0x024 => AdminCommandMediaNotReady, "Admin Command Media Not Ready";
    0x080 => LbaOutOfRange, "LBA Out of Range";
    0x081 => CapacityExceeded, "Capacity Exceeded";
    0x082 => NamespaceNotReady, "Namespace Not Ready";
    0x083 => ReservationConflict, "Reservation Conflict";
    0x084 => FormatInProgress, "Format In Progress";
    // Command specific status (SCT 1), admin commands.
    0x100 => CompletionQueueInvalid, "Completion Queue Invalid";
    0x101 => InvalidQueueIdentifier, "Invalid Queue Identifier";
    0x102 => InvalidQueueSize, "Invalid Queue Size";
    0x103 => AbortCommandLimitExceeded, "Abort Command Limit Exceeded";
    0x105 => AsyncEventRequestLimitExceeded, "Asynchronous Event Request Limit Exceeded";
    0x106 => InvalidFirmwareSlot, "Invalid Firmware Slot";
    0x107 => InvalidFirmwareImage, "Invalid Firmware Image";
    0x108 => InvalidInterruptVector, "Invalid Interrupt Vector";
    0x109 => InvalidLogPage, "Invalid Log Page";
    0x10A => InvalidFormat, "Invalid Format";
    0x10B => FirmwareNeedsConventionalReset, "Firmware Activation Requires Conventional Reset";
    0x10C => InvalidQueueDeletion, "Invalid Queue Deletion";
    0x10D => FeatureNotSaveable, "Feature Identifier Not Saveable";
    0x10E => FeatureNotChangeable, "Feature Not Changeable";
    0x10F => FeatureNotNamespaceSpecific, "Feature Not Namespace Specific";
    0x110 => FirmwareNeedsSubsystemReset, "Firmware Activation Requires NVM Subsystem Reset";
    0x111 => FirmwareNeedsReset, "Firmware Activation Requires Controller Level Reset";
    0x112 => FirmwareNeedsMaxTimeViolation, "Firmware Activation Requires Maximum Time Violation";
    0x113 => FirmwareActivationProhibited, "Firmware Activation Prohibited";
    0x114 => OverlappingRange, "Overlapping Range";
    0x115 => NamespaceInsufficientCapacity, "Namespace Insufficient Capacity";
    0x116 => NamespaceIdUnavailable, "Namespace Identifier Unavailable";
    0x118 => NamespaceAlreadyAttached, "Namespace Already Attached";
    0x119 => NamespaceIsPrivate, "Namespace Is Private";
    0x11A => NamespaceNotAttached, "Namespace Not Attached";
    0x11B => ThinProvisioningNotSupported, "Thin Provisioning Not Supported";
    0x11C => ControllerListInvalid, "Controller List Invalid";
    0x11D => DeviceSelfTestInProgress, "Device Self-test In Progress";
    0x11E => BootPartitionWriteProhibited, "Boot Partition Write Prohibited";
    0x11F => InvalidControllerIdentifier, "Invalid Controller Identifier";
    0x120 => InvalidSecondaryControllerState, "Invalid Secondary Controller State";
    0x121 => InvalidNumberOfControllerResources, "Invalid Number of Controller Resources";
    0x122 => InvalidResourceIdentifier, "Invalid Resource Identifier";
    0x123 => SanitizeProhibitedPmrEnabled, "Sanitize Prohibited While Persistent Memory Region is Enabled";
    0x124 => AnaGroupIdentifierInvalid, "ANA Group Identifier Invalid";
    0x125 => AnaAttachFailed, "ANA Attach Failed";
    0x126 => InsufficientCapacity, "Insufficient Capacity";
    0x127 => NamespaceAttachmentLimitExceeded, "Namespace Attachment Limit Exceeded";
    0x128 => ProhibitionNotSupported, "Prohibition of Command Execution Not Supported";
    0x129 => IoCommandSetNotSupported, "I/O Command Set Not Supported";
    0x12A => IoCommandSetNotEnabled, "I/O Command Set Not Enabled";
    0x12B => IoCommandSetCombinationRejected, "I/O Command Set Combination Rejected";
    0x12C => InvalidIoCommandSet, "Invalid I/O Command Set";
    0x12D => IdentifierUnavailable, "Identifier Unavailable";
    // Media and data integrity errors (SCT 2).
    0x280 => WriteFault, "Write Fault";
    0x281 => UnrecoveredReadError, "Unrecovered Read Error";
    0x282 => GuardCheckError, "End-to-end Guard Check Error";
    0x283 => ApplicationTagCheckError, "End-to-end Application Tag Check Error";
    0x284 => ReferenceTagCheckError, "End-to-end Reference Tag Check Error";
    0x285 => CompareFailure, "Compare Failure";
    0x286 => AccessDenied, "Access Denied";
    0x287 => UnwrittenBlock, "Deallocated or Unwritten Logical Block";
    // Path related status (SCT 3).
    0x300 => InternalPathError, "Internal Path Error";
    0x301 => AnaPersistentLoss, "Asymmetric Access Persistent Loss";
    0x302 => AnaInaccessible, "Asymmetric Access Inaccessible";
    0x303 => AnaTransition, "Asymmetric Access Transition";
    0x360 => ControllerPathingError, "Controller Pathing Error";
    0x370 => HostPathingError, "Host Pathing Error";
    0x371 => AbortedByHost, "Command Aborted By Host";
}

/// The status field of a failed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NvmeStatus(u16);

impl NvmeStatus {
    /// From the value the passthrough ioctl returned. Bits above the
    /// 15-bit status field are not part of it and are dropped.
    pub fn from_ioctl(ret: u32) -> Self {
        Self((ret & 0x7fff) as u16)
    }

    /// The raw 15-bit status field.
    pub fn raw(self) -> u16 {
        self.0
    }

    /// Status Code Type.
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }

    /// Status Code.
    pub fn sc(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// Command Retry Delay index.
    pub fn crd(self) -> u8 {
        ((self.0 >> 11) & 0x3) as u8
    }

    /// More information in the Error Information log page.
    pub fn more(self) -> bool {
        self.0 & 0x2000 != 0
    }

    /// Do Not Retry: the same command will fail again.
    pub fn dnr(self) -> bool {
        self.0 & 0x4000 != 0
    }

    /// The status code, named where known.
    pub fn code(self) -> StatusCode {
        StatusCode::from_code(self.0 & 0x7ff)
    }
}

impl fmt::Display for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code().name() {
            Some(n) => write!(f, "{n}")?,
            None => write!(f, "unknown status")?,
        }
        write!(f, " (SCT {:#x}, SC {:#04x}", self.sct(), self.sc())?;
        if self.dnr() {
            write!(f, ", do not retry")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_split_per_the_completion_entry_layout() {
        // DNR | More | CRD=2 | SCT=1 | SC=0x1A
        let s = NvmeStatus::from_ioctl(0x4000 | 0x2000 | (2 << 11) | 0x11A);
        assert_eq!(s.sct(), 1);
        assert_eq!(s.sc(), 0x1A);
        assert_eq!(s.crd(), 2);
        assert!(s.more());
        assert!(s.dnr());
        assert_eq!(s.code(), StatusCode::NamespaceNotAttached);
    }

    #[test]
    fn well_known_codes_have_their_specification_names() {
        let name = |c| StatusCode::from_code(c).name().unwrap();
        assert_eq!(name(0x0001), "Invalid Command Opcode");
        assert_eq!(name(0x0002), "Invalid Field in Command");
        assert_eq!(name(0x0118), "Namespace Already Attached");
        assert_eq!(name(0x011A), "Namespace Not Attached");
        assert_eq!(name(0x0115), "Namespace Insufficient Capacity");
        assert_eq!(
            name(0x010B),
            "Firmware Activation Requires Conventional Reset"
        );
        assert_eq!(name(0x0120), "Invalid Secondary Controller State");
        assert_eq!(StatusCode::NamespaceAlreadyAttached.code(), 0x118);
    }

    #[test]
    fn unknown_codes_are_kept_as_other() {
        let s = NvmeStatus::from_ioctl(0x1FF);
        assert_eq!(s.code(), StatusCode::Other(0x1FF));
        assert_eq!(s.code().name(), None);
        assert_eq!(s.to_string(), "unknown status (SCT 0x1, SC 0xff)");
    }

    #[test]
    fn display_names_the_code_and_dnr() {
        let s = NvmeStatus::from_ioctl(0x4002);
        assert_eq!(
            s.to_string(),
            "Invalid Field in Command (SCT 0x0, SC 0x02, do not retry)"
        );
    }
}
