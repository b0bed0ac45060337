#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((aligned(64))) int8_t X[4][1536];
int main(){
  for(int r=0;r<4;r++)for(int i=0;i<1536;i++)X[r][i]=(i*7+r)&63;
  __m256i q[4], s[4]; for(int k=0;k<4;k++){q[k]=_mm256_set1_epi8(k+3); s[k]=_mm256_set1_epi16(k+1);}
  long N=2000000; __m256i tot=_mm256_setzero_si256(); double t=now();
  for(long n=0;n<N;n++){
    int b=n%6;
    __m256i a0=_mm256_setzero_si256(),a1=a0,a2=a0,a3=a0;
    for(int h=0;h<2;h++){
      __asm__ volatile("" : "+x"(q[0]),"+x"(q[1]),"+x"(q[2]),"+x"(q[3]));
      for(int k=0;k<4;k++){
        const int8_t* off = &X[0][b*256+128*h+32*k];
        a0=_mm256_add_epi32(a0,_mm256_madd_epi16(_mm256_maddubs_epi16(q[k],_mm256_load_si256((const __m256i*)off)),s[k]));
        a1=_mm256_add_epi32(a1,_mm256_madd_epi16(_mm256_maddubs_epi16(q[k],_mm256_load_si256((const __m256i*)(off+1536))),s[k]));
        a2=_mm256_add_epi32(a2,_mm256_madd_epi16(_mm256_maddubs_epi16(q[k],_mm256_load_si256((const __m256i*)(off+3072))),s[k]));
        a3=_mm256_add_epi32(a3,_mm256_madd_epi16(_mm256_maddubs_epi16(q[k],_mm256_load_si256((const __m256i*)(off+4608))),s[k]));
      }
    }
    tot=_mm256_add_epi32(tot,_mm256_add_epi32(_mm256_add_epi32(a0,a1),_mm256_add_epi32(a2,a3)));
  }
  t=now()-t; int x[8]; _mm256_storeu_si256((__m256i*)x,tot);
  printf("%.2f ns per row-block (%d)\n", t/(N*4.0)*1e9, x[0]);
}
