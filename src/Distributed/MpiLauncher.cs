using System.Globalization;
using System.Runtime.InteropServices;

namespace OrtFinetune.Distributed;

/// <summary>
/// Starting a data-parallel run under Open MPI's <c>mpirun</c>: where it is and which arguments to
/// give it. The host re-executes itself as <c>mpirun &lt;Arguments&gt; dotnet ortfinetune.dll train ...</c>;
/// each rank then finds its <see cref="Communicator"/> with <see cref="Communicator.FromEnvironment(Microsoft.Extensions.Logging.ILogger?)"/>.
/// </summary>
/// <remarks>
/// Environment: for ranks on this machine Open MPI's mpirun passes its whole environment on, so
/// settings such as <c>ORTFINETUNE_Train__BatchSize</c> or <c>DOTNET_ROOT</c> need nothing more. Ranks
/// on other machines of a hostfile start with the remote shell's environment: forward what they need
/// with <c>-x NAME</c> (or <c>-x NAME=value</c>) before the program, e.g.
/// <c>mpirun -x DOTNET_ROOT -x ORTFINETUNE_Train__BatchSize --hostfile hosts -n 8 ...</c>.
/// </remarks>
public static class MpiLauncher
{
    /// <summary>What to tell a user whose machine has no Open MPI.</summary>
    public static string MissingMessage =>
        "Open MPI is needed to run several ranks (data parallel) and was not found: install it with " +
        "`apt-get install openmpi-bin` (Debian/Ubuntu; it brings the library, libopenmpi3) or your distribution's openmpi package.";

    /// <summary>The full path of <c>mpirun</c> on PATH, or null.</summary>
    public static string? FindMpirun()
    {
        var path = Environment.GetEnvironmentVariable("PATH");
        if (string.IsNullOrEmpty(path)) return null;
        foreach (var dir in path.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, OperatingSystem.IsWindows() ? "mpirun.exe" : "mpirun");
            if (File.Exists(candidate)) return Path.GetFullPath(candidate);
        }
        return null;
    }

    /// <summary>Whether this process runs as root (effective uid 0): Open MPI refuses root without
    /// <c>--allow-run-as-root</c>.</summary>
    public static bool IsRunningAsRoot => OperatingSystem.IsLinux() && geteuid() == 0;

    /// <summary><see cref="Arguments(int, int, bool, string?)"/> for this machine: its logical
    /// processors as the slots, and whether it runs as root.</summary>
    public static IReadOnlyList<string> Arguments(int ranks, string? hostfile = null) =>
        Arguments(ranks, Environment.ProcessorCount, IsRunningAsRoot, hostfile);

    /// <summary>
    /// mpirun's arguments before the program: <c>-n N</c>; <c>--oversubscribe</c> when N exceeds
    /// <paramref name="slotsAvailable"/> (by default Open MPI counts physical cores as slots and refuses
    /// more ranks than slots; oversubscribed ranks also yield the CPU while they wait);
    /// <c>--allow-run-as-root</c> when <paramref name="isRoot"/>; <c>--hostfile F</c> when given;
    /// <c>--bind-to none</c>, so each rank's thread pool can use every core it is given rather than the
    /// one core Open MPI binds it to by default; <c>--mca btl ^openib</c>, which leaves out the
    /// InfiniBand verbs transport (superseded by UCX) and its warnings on machines with RDMA devices.
    /// </summary>
    public static IReadOnlyList<string> Arguments(int ranks, int slotsAvailable, bool isRoot, string? hostfile)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(ranks, 1);
        var args = new List<string> { "-n", ranks.ToString(CultureInfo.InvariantCulture) };
        // Local runs always oversubscribe: Open MPI counts physical cores as slots, and a VM's logical processors may
        // be hyperthreads of fewer cores. A hostfile declares its slots itself.
        if (string.IsNullOrEmpty(hostfile) || ranks > slotsAvailable) args.Add("--oversubscribe");
        if (isRoot) args.Add("--allow-run-as-root");
        if (!string.IsNullOrEmpty(hostfile)) args.AddRange(["--hostfile", hostfile]);
        args.AddRange(["--bind-to", "none", "--mca", "btl", "^openib"]);
        // mpirun gives each local rank a pseudo-terminal; with TERM=dumb .NET writes no terminal control codes into it.
        args.AddRange(["-x", "TERM=dumb"]);
        return args;
    }

    [DllImport("libc.so.6", ExactSpelling = true)]
    static extern uint geteuid();
}
