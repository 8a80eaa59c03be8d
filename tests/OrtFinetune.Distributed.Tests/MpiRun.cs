using System.Diagnostics;
using System.Reflection;
using System.Text;
using OrtFinetune.Distributed;

namespace OrtFinetune.Distributed.Tests;

/// <summary>A fact that needs Open MPI's mpirun: skipped, with the reason, only where mpirun is missing.</summary>
public sealed class MpiFactAttribute : FactAttribute
{
    public MpiFactAttribute()
    {
        if (MpiRun.Mpirun == null) Skip = MpiRun.SkipReason;
    }
}

/// <summary>A theory that needs Open MPI's mpirun (see <see cref="MpiFactAttribute"/>).</summary>
public sealed class MpiTheoryAttribute : TheoryAttribute
{
    public MpiTheoryAttribute()
    {
        if (MpiRun.Mpirun == null) Skip = MpiRun.SkipReason;
    }
}

/// <summary>Runs the probe under mpirun: <c>mpirun &lt;MpiLauncher.Arguments&gt; dotnet Probe.dll scenario</c>.</summary>
public static class MpiRun
{
    public static string? Mpirun { get; } = MpiLauncher.FindMpirun();

    public const string SkipReason = "mpirun not found on PATH: install Open MPI (apt-get install openmpi-bin) to run the MPI tests";

    /// <summary>The probe's built path, written into this assembly by the project file.</summary>
    public static string ProbeDll { get; } =
        typeof(MpiRun).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "ProbePath").Value!;

    /// <summary>This process's dotnet host when it runs under one, else dotnet from PATH.</summary>
    static string Dotnet =>
        Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";

    public sealed record Result(int ExitCode, string Output, TimeSpan Elapsed, bool TimedOut);

    public static Result Run(int ranks, string scenario, TimeSpan limit)
    {
        Assert.True(File.Exists(ProbeDll), $"probe not built at {ProbeDll}");
        var psi = new ProcessStartInfo(Mpirun!)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in MpiLauncher.Arguments(ranks)) psi.ArgumentList.Add(a);
        foreach (var a in (string[])[Dotnet, ProbeDll, scenario]) psi.ArgumentList.Add(a);
        // The test host may itself run under a launcher: the ranks must see only mpirun's variables.
        foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("PMI", StringComparison.Ordinal) || k.StartsWith("OMPI_COMM_WORLD", StringComparison.Ordinal)).ToList())
            psi.Environment.Remove(key);

        var output = new StringBuilder();
        var watch = Stopwatch.StartNew();
        using var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        bool timedOut = !p.WaitForExit(limit);
        if (timedOut) p.Kill(entireProcessTree: true);
        p.WaitForExit();
        watch.Stop();
        string text;
        lock (output) text = output.ToString();
        return new Result(timedOut ? -1 : p.ExitCode, text, watch.Elapsed, timedOut);
    }
}
