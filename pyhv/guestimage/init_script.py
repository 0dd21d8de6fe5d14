"""The ``/init`` of the default guest: a busybox ``sh`` script run as PID 1.

It mounts the kernel's virtual file systems, loads the drivers of the devices the machine has
(below), prints :data:`READY_MARKER`, then either runs the command
given after `` -- `` on the kernel command line and powers off with its exit status, or, with
no command, gives a login-less shell on the console (with job control: ``cttyhack`` makes
ttyS0 its controlling terminal) and powers off with the shell's status when it ends.

Drivers are loaded as udev's coldplug would: every device in sysfs without a driver names the
one it wants in its ``modalias`` (``pci:v00001AF4d00001005...``, ``virtio:d00000004v00001AF4``);
``modules.alias.sh``, the module aliases as one shell ``case``, names the module, and busybox
``modprobe`` loads it with its dependencies from ``modules.dep``. A driver can bring new devices
(virtio-pci the virtio devices behind it, the ACPI button an input device, whose driver is
evdev), so the pass repeats until no module is wanted. Modules for devices the machine lacks
stay on disk: each one loaded costs a signature check (a SHA-256 of the module and an RSA
verification). Measured on the software CPU (PyPy), the boot with no virtio device: loading
all 16 modules took 177 million instructions from ``/init`` to the ready marker, coldplug 51
million (2 modules); the time stayed the same (47.5 s for the whole boot, side by side),
because on a software CPU code run for the first time costs more than instructions do. The
matching is done by the shell's builtins for the same reason: a pattern loop in the shell ran
12.6 million instructions and modprobe's own alias lookup 6.3 million, against 4.2 million.

The command is read from ``/proc/cmdline`` rather than from init's argv: the kernel splits
argv at spaces and only understands double quotes, so ``-- sh -c 'exit 3'`` would reach init as
``'exit`` and ``3'``; the text after the first `` -- `` is instead handed to ``sh -c`` verbatim,
less a pair of double quotes around all of it (``pyhv guest run`` adds them: the kernel counts a
quoted command as one init argument, and panics past 32 of them).

The ACPI power button (``virsh shutdown``, QMP ``system_powerdown``) powers the guest off, as on
a distribution where acpid or systemd-logind acts on it: the kernel's ``button`` driver reports
KEY_POWER on an input device, ``evdev`` shows it as ``/dev/input/eventN``, and busybox ``acpid``,
started by ``/init`` once the modules are in, runs :data:`POWER_BUTTON_HANDLER_PATH`. busybox
acpid's built-in tables map KEY_POWER to that path (``PWRF/00000080`` under ``/etc/acpi``). The
handler ends the machine with ``poweroff -f`` (ACPI S5) rather than by signalling PID 1: this
``sh`` only runs a trap once its foreground shell has exited, and the console shell cannot be
put in the background without losing Ctrl-C (ash ignores SIGINT for good in background jobs).

The exit status leaves through the isa-debug-exit port with ``pyhv-exit`` (see exit_tool.py):
the VM process then exits with ``(status << 1) | 1``. Without that device the write does
nothing and ``poweroff -f`` ends the VM with status 0.
"""

from __future__ import annotations

READY_MARKER = "pyhv-guest: init ready"
STATUS_MARKER = "pyhv-guest: exit status"
EXIT_TOOL_PATH = "sbin/pyhv-exit"
MODULES_DEP_NAME = "modules.dep"
MODULES_ALIAS_NAME = "modules.alias"
# modules.alias as a shell function, module_for MODALIAS (see modinfo.alias_case_function).
MODULES_ALIAS_SHELL_NAME = "modules.alias.sh"
ACPID_LOG_PATH = "var/log/acpid.log"
POWER_BUTTON_HANDLER_PATH = "etc/acpi/PWRF/00000080"
POWER_BUTTON_MARKER = "pyhv-guest: power button pressed, powering off"

POWER_BUTTON_HANDLER = rf"""#!/bin/sh
# Run by acpid on a press of the ACPI power button. Written by pyhv.guestimage.
echo "{POWER_BUTTON_MARKER}" > /dev/console
# Let the UART send the line before the machine ends (see drain_console in /init).
stty -F /dev/console "$(stty -F /dev/console -g 2>/dev/null)" 2>/dev/null
# The root is the initramfs; poweroff -f syncs any disk the user mounted, then enters ACPI S5.
poweroff -f
"""

INIT_SCRIPT = r"""#!/bin/sh
# /init of pyhv's default guest, PID 1. Written by pyhv.guestimage; rebuilt when it changes.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
hostname pyhv-guest

release=$(uname -r)
modules=/lib/modules/$release
if [ -r "$modules/modules.alias.sh" ]; then
    # Coldplug: each device without a driver names the driver it wants in its modalias;
    # module_for (modules.alias as one shell case) finds the module, and modprobe loads it
    # with its dependencies from modules.dep. Loading a driver can add devices, so the pass
    # repeats. No process per device: each process, and each line of code run for the first
    # time, is slow on a software CPU.
    . "$modules/modules.alias.sh"
    loaded=" "
    for pass in 1 2 3 4 5; do
        wanted=
        for file in /sys/bus/*/devices/*/modalias /sys/class/input/*/modalias; do
            # A pattern that matched nothing stays as it is: skip it.
            [ -r "$file" ] || continue
            [ -e "${file%/modalias}/driver" ] && continue
            read -r device < "$file" || continue
            module_for "$device"
            [ -n "$module" ] || continue
            case "$loaded$wanted " in
                *" $module "*) ;;
                *) wanted="$wanted $module" ;;
            esac
        done
        [ -n "$wanted" ] || break
        modprobe -a $wanted || echo "pyhv-guest: modprobe -a$wanted failed"
        loaded="$loaded${wanted# } "
    done
else
    echo "pyhv-guest: no modules for kernel $release in this initramfs"
fi

# Act on the ACPI power button: acpid reads the button's /dev/input/event* (button and evdev
# are loaded above) and runs /etc/acpi/PWRF/00000080, which powers off.
if [ -e /dev/input/event0 ]; then
    acpid -l /var/log/acpid.log || echo "pyhv-guest: acpid failed; the power button will be ignored"
else
    echo "pyhv-guest: no input event devices; the power button will be ignored"
fi

# Wait until the console has sent everything: the VM may end right after, and bytes still in
# the UART driver's buffer would be lost. stty applies its (unchanged) settings with TCSADRAIN.
drain_console() {
    stty -F /dev/console "$(stty -F /dev/console -g 2>/dev/null)" 2>/dev/null
}

power_off() {
    drain_console
    /sbin/pyhv-exit "$1"
    poweroff -f
    # Only reached if power-off failed: PID 1 exiting panics the kernel, which panic=-1 reboots.
    exit "$1"
}

command=
padded_cmdline=" $(cat /proc/cmdline)"
case "$padded_cmdline" in
    *" -- "*) command=${padded_cmdline#* -- } ;;
esac
# The kernel hands each word after -- to init as an argument and panics past 32 ("Too many
# boot init vars"); a double-quoted command is one argument, so `pyhv guest run` quotes it.
# The quotes are not part of the command (only when they are the only ones in it).
case "$command" in
    \"*\")
        inner=${command#\"}
        inner=${inner%\"}
        case "$inner" in
            *\"*) ;;
            *) command=$inner ;;
        esac ;;
esac

echo "pyhv-guest: init ready"
if [ -n "$command" ]; then
    sh -c "$command"
    status=$?
    echo "pyhv-guest: exit status $status"
    power_off "$status"
fi

echo "pyhv-guest: no command after ' -- ' on the kernel command line; starting a shell"
setsid cttyhack sh -l
power_off "$?"
"""
