#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define T(NAME, INS) { long N=200000000; double t=now(); for(long n=0;n<N;n++){ __asm__ volatile( \
 INS " %%ymm8,%%ymm0,%%ymm0\n\t" INS " %%ymm8,%%ymm1,%%ymm1\n\t" INS " %%ymm8,%%ymm2,%%ymm2\n\t" INS " %%ymm8,%%ymm3,%%ymm3\n\t" \
 INS " %%ymm8,%%ymm4,%%ymm4\n\t" INS " %%ymm8,%%ymm5,%%ymm5\n\t" INS " %%ymm8,%%ymm6,%%ymm6\n\t" INS " %%ymm8,%%ymm7,%%ymm7\n\t" \
 ::: "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7"); } t=now()-t; printf("%s: %.3f cycles each at 2.96 GHz\n", NAME, t/(N*8.0)*2.96e9); }
#define M(NAME) { long N=200000000; double t=now(); for(long n=0;n<N;n++){ __asm__ volatile( \
 "vpmaddubsw %%ymm8,%%ymm0,%%ymm0\n\tvpmaddwd %%ymm8,%%ymm1,%%ymm1\n\tvpmaddubsw %%ymm8,%%ymm2,%%ymm2\n\tvpmaddwd %%ymm8,%%ymm3,%%ymm3\n\t" \
 "vpmaddubsw %%ymm8,%%ymm4,%%ymm4\n\tvpmaddwd %%ymm8,%%ymm5,%%ymm5\n\tvpmaddubsw %%ymm8,%%ymm6,%%ymm6\n\tvpmaddwd %%ymm8,%%ymm7,%%ymm7\n\t" \
 ::: "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7"); } t=now()-t; printf("%s: %.3f cycles each\n", NAME, t/(N*8.0)*2.96e9); }
int main(){ T("vpmaddubsw","vpmaddubsw") T("vpmaddwd","vpmaddwd") T("vpaddd","vpaddd") T("vpmullw","vpmullw") T("vfmadd231ps","vfmadd231ps") M("mix") }
