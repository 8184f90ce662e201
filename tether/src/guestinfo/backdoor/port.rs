//! The only code that touches the backdoor's I/O ports: CPUID detection, I/O permission, and the
//! three instructions. Executing `in` without I/O permission on a machine that is not VMware
//! kills the process with SIGSEGV, so [`IoPorts`] can only be built after both checks passed.
#![allow(unsafe_code)]

use super::{BackdoorError, Hypervisor, Regs, PORT_LB};

/// True when CPUID says a hypervisor is present and its vendor is "VMwareVMware".
pub fn is_vmware_cpu() -> bool {
    hypervisor_vendor().as_deref() == Some("VMwareVMware")
}

/// The hypervisor vendor string of CPUID leaf 0x40000000, if the hypervisor bit is set.
#[cfg(target_arch = "x86_64")]
pub fn hypervisor_vendor() -> Option<String> {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID is available on every x86_64 CPU and has no side effects.
    #[allow(unused_unsafe)]
    let leaf1 = unsafe { __cpuid(1) };
    if leaf1.ecx & (1 << 31) == 0 {
        return None;
    }
    // SAFETY: as above; leaf 0x40000000 is defined whenever the hypervisor bit is set.
    #[allow(unused_unsafe)]
    let hv = unsafe { __cpuid(0x4000_0000) };
    let mut vendor = Vec::with_capacity(12);
    for word in [hv.ebx, hv.ecx, hv.edx] {
        vendor.extend_from_slice(&word.to_le_bytes());
    }
    Some(
        String::from_utf8_lossy(&vendor)
            .trim_end_matches('\0')
            .to_string(),
    )
}

#[cfg(not(target_arch = "x86_64"))]
pub fn hypervisor_vendor() -> Option<String> {
    None
}

/// The real backdoor ports of this thread (and of threads started after [`IoPorts::acquire`]).
pub struct IoPorts {
    _private: (),
}

impl IoPorts {
    /// Checks the CPU (unless `force`) and takes I/O permission for the backdoor ports.
    pub fn acquire(force: bool) -> Result<Self, BackdoorError> {
        let vmware = is_vmware_cpu();
        if !vmware && !force {
            let seen = hypervisor_vendor().map_or("no hypervisor".to_string(), |v| {
                format!("CPUID vendor {v:?}")
            });
            return Err(BackdoorError::NotVmware(seen));
        }
        if let Err(e) = io_permission() {
            // VMware lets user code reach the backdoor without permission; anything else would fault.
            if !vmware {
                return Err(BackdoorError::NoIoPermission(e));
            }
        }
        Ok(Self { _private: () })
    }
}

/// `iopl(3)`, or else `ioperm` for the four bytes of the LB port and the HB port after it (a 32-bit
/// `in` is checked against four bitmap bits).
#[cfg(target_arch = "x86_64")]
fn io_permission() -> Result<(), String> {
    // SAFETY: iopl only changes this thread's I/O privilege level; no memory is involved.
    if unsafe { libc::iopl(3) } == 0 {
        return Ok(());
    }
    let iopl_err = std::io::Error::last_os_error();
    // SAFETY: ioperm only changes this thread's I/O permission bitmap.
    if unsafe { libc::ioperm(libc::c_ulong::from(PORT_LB), 4, 1) } == 0 {
        return Ok(());
    }
    let ioperm_err = std::io::Error::last_os_error();
    Err(format!("iopl: {iopl_err}; ioperm: {ioperm_err}"))
}

#[cfg(not(target_arch = "x86_64"))]
fn io_permission() -> Result<(), String> {
    Err("the backdoor exists on x86_64 only".into())
}

#[cfg(target_arch = "x86_64")]
impl Hypervisor for IoPorts {
    fn low_bandwidth(&mut self, r: &mut Regs) {
        let mut bx = u64::from(r.bx);
        // SAFETY: an IoPorts exists only once this thread may use the ports and the host is VMware
        // (or the caller forced it with permission granted). RBX is reserved by LLVM, so it is
        // swapped through a scratch register; the instruction touches no memory.
        unsafe {
            std::arch::asm!(
                "xchg {bx}, rbx",
                "in eax, dx",
                "xchg {bx}, rbx",
                bx = inout(reg) bx,
                inout("eax") r.ax,
                inout("ecx") r.cx,
                inout("edx") r.dx,
                inout("esi") r.si,
                inout("edi") r.di,
                options(nostack),
            );
        }
        r.bx = bx as u32;
    }

    fn high_bandwidth_out(&mut self, r: &mut Regs, data: &[u8]) {
        let mut bx = u64::from(r.bx);
        let count = data.len().min(r.cx as usize);
        // SAFETY: as for low_bandwidth; `rep outsb` reads `count` bytes from `data`, which has at
        // least that many. RBP is saved on the stack and restored (the asm may use the stack).
        unsafe {
            std::arch::asm!(
                "push rbp",
                "mov rbp, {bp}",
                "xchg {bx}, rbx",
                "cld",
                "rep outsb",
                "xchg {bx}, rbx",
                "pop rbp",
                bp = in(reg) u64::from(r.bp),
                bx = inout(reg) bx,
                inout("rax") u64::from(r.ax) => _,
                inout("rcx") count => _,
                inout("rdx") u64::from(r.dx) => _,
                inout("rsi") data.as_ptr() => _,
                inout("rdi") u64::from(r.di) => _,
            );
        }
        r.bx = bx as u32;
    }

    fn high_bandwidth_in(&mut self, r: &mut Regs, buf: &mut [u8]) {
        let mut bx = u64::from(r.bx);
        let count = buf.len().min(r.cx as usize);
        // SAFETY: as above; `rep insb` writes `count` bytes into `buf`, which has that many.
        unsafe {
            std::arch::asm!(
                "push rbp",
                "mov rbp, {bp}",
                "xchg {bx}, rbx",
                "cld",
                "rep insb",
                "xchg {bx}, rbx",
                "pop rbp",
                bp = in(reg) u64::from(r.bp),
                bx = inout(reg) bx,
                inout("rax") u64::from(r.ax) => _,
                inout("rcx") count => _,
                inout("rdx") u64::from(r.dx) => _,
                inout("rsi") u64::from(r.si) => _,
                inout("rdi") buf.as_mut_ptr() => _,
            );
        }
        r.bx = bx as u32;
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Hypervisor for IoPorts {
    fn low_bandwidth(&mut self, r: &mut Regs) {
        r.ax = u32::MAX;
    }
    fn high_bandwidth_out(&mut self, r: &mut Regs, _data: &[u8]) {
        r.bx = 0;
    }
    fn high_bandwidth_in(&mut self, r: &mut Regs, _buf: &mut [u8]) {
        r.bx = 0;
    }
}
