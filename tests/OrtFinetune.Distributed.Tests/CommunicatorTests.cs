using Xunit.Abstractions;

namespace OrtFinetune.Distributed.Tests;

/// <summary>
/// The binding against a real Open MPI: the probe runs as 2 (or 3) ranks under mpirun. Each start
/// costs one to three seconds on 2 cores; the class's tests run one after another.
/// </summary>
public sealed class CommunicatorTests(ITestOutputHelper output)
{
    static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    MpiRun.Result Run(int ranks, string scenario)
    {
        var r = MpiRun.Run(ranks, scenario, Limit);
        output.WriteLine($"mpirun -n {ranks} probe {scenario}: exit {r.ExitCode} after {r.Elapsed.TotalSeconds:F2} s{(r.TimedOut ? " (timed out)" : "")}");
        output.WriteLine(r.Output);
        return r;
    }

    [MpiTheory]
    [InlineData(2)]
    [InlineData(3)]   // more ranks than this VM's cores: --oversubscribe, and a size that is not a power of two
    public void EveryRankGetsTheSumInEveryType(int ranks)
    {
        var r = Run(ranks, "rank-sum");
        Assert.False(r.TimedOut);
        Assert.Equal(0, r.ExitCode);
        int total = ranks * (ranks + 1) / 2;
        for (int rank = 0; rank < ranks; rank++)
        {
            Assert.Contains($"rank {rank}: rank-sum ok, {ranks} ranks, sum {total}; Open MPI", r.Output);
            Assert.Contains($"rank {rank}: non-finite ok", r.Output);
            Assert.Contains($"rank {rank} of {ranks}, host memory", r.Output);
        }
    }

    [MpiFact]
    public void BroadcastCarriesTheRootsBytes()
    {
        var r = Run(2, "broadcast");
        Assert.False(r.TimedOut);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("rank 0: broadcast ok", r.Output);
        Assert.Contains("rank 1: broadcast ok", r.Output);
    }

    /// <summary>Rank 1 leaves (exit code 3, an unhandled exception, MPI_Abort(5)) while rank 0 waits in
    /// a collective: mpirun must end the whole job with a non-zero code, well within the limit.</summary>
    [MpiTheory]
    [InlineData("die-exit", "rank 0: waiting in allreduce")]
    [InlineData("die-crash", "rank 0: waiting in barrier")]
    [InlineData("abort", "rank 0: waiting in barrier")]
    public void ADyingRankEndsTheJob(string scenario, string waiting)
    {
        var r = Run(2, scenario);
        Assert.False(r.TimedOut, $"mpirun -n 2 probe {scenario} still ran after {Limit.TotalSeconds} s");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains(waiting, r.Output);
        Assert.DoesNotContain("UNEXPECTED", r.Output);
        if (scenario == "die-exit") Assert.Equal(3, r.ExitCode);
        if (scenario == "abort") Assert.Equal(5, r.ExitCode);
    }
}
